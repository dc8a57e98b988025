import os

import pytest
import torch

# Tests never reach the network, and keep the Hub cache and diffusers' module cache private.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # quiets bars that take tqdm defaults (datasets, downloads)


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_MODULES_CACHE", str(home / "modules"))
    monkeypatch.setenv("DENOISING_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "dd_cache"))
    yield
    # Accelerate keeps one process-wide state; each test's Trainer may ask for other settings.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def tiny_unet(channels: int = 1, size: int = 8, **kwargs):
    from denoising_diffusion import ContinuousUNet2DModel

    config = dict(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=4,
    )
    config.update(kwargs)
    unet = ContinuousUNet2DModel(**config)
    # The output layer starts at zero (as in the Keras DDIM example); give it weights so outputs depend on inputs.
    with torch.no_grad():
        torch.nn.init.normal_(unet.conv_out.weight, std=0.2, generator=torch.Generator().manual_seed(0))
    return unet


# An untrained tiny UNet's samples reach |x| of a few hundred, which the default image_std of 0.5 clips to 0 or 1
# nearly everywhere: two different samples then agree on most pixels by chance (and, on another CPU's rounding,
# on all of them). The tiny pipelines map samples back with this std instead, so their images stay inside (0, 1).
UNCLIPPED_STD = 1e-3


def tiny_pipeline(channels: int = 1, size: int = 8, unet=None, **pipe_kwargs):
    """A pipeline around `unet` (default: `tiny_unet(channels, size)`) with images mapped back unclipped."""
    from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler

    unet = tiny_unet(channels, size) if unet is None else unet
    pipe_kwargs.setdefault("image_std", [UNCLIPPED_STD] * unet.config.in_channels)
    pipe = CosineDDIMPipeline(unet, CosineDDIMScheduler(), **pipe_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


TINY_ARGS = ["--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "40", "--logger", "none",
             "--unet", '{"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}',
             "--num_grid_images", "4", "--grid_inference_steps", "2", "--logging_steps", "1"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny pipeline trained through the normal training path (3 steps on 40 digits)."""
    from accelerate.state import AcceleratorState, GradientState

    from denoising_diffusion.training import parse_config, train

    out = tmp_path_factory.mktemp("trained") / "digits-tiny"
    folder = train(parse_config(TINY_ARGS + ["--output_dir", str(out), "--max_train_steps", "3",
                                             "--checkpointing_steps", "2"]))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return folder
