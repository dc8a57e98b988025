"""`patch_size`: the UNet works on p x p pixel patches (pixel_unshuffle in, pixel_shuffle out); saved folders of
patched UNets and of UNets with position channels sample alike with and without the package."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel
from torch.nn import functional as F

from conftest import tiny_unet
from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler, ContinuousUNet2DModel
from denoising_diffusion.training import ConfigError, parse_config, train
from test_pipeline import _sample_in_subprocess
from test_training import TINY, KillAfterCheckpoint

PATCHED_UNET = '{"block_out_channels": [16, 16], "layers_per_block": 1, "norm_num_groups": 4, "patch_size": 2}'


def test_a_patched_unet_is_the_plain_unet_on_unshuffled_pixels():
    patched = tiny_unet(channels=3, size=8, patch_size=2).eval()
    assert patched.conv_in.in_channels == 12 and patched.conv_out.out_channels == 12
    assert patched.downsample_factor == 4  # 2x2 patches, then one downsampling level
    # The same weights in a plain UNet on 12-channel 4x4 inputs: the patched model must be exactly that, wrapped.
    plain = tiny_unet(channels=12, size=4).eval()
    plain.load_state_dict(patched.state_dict())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = patched(x, 0.4).sample
        expected = F.pixel_shuffle(plain(F.pixel_unshuffle(x, 2), 0.4).sample, 2)
        assert out.shape == (2, 3, 8, 8) and torch.count_nonzero(out) > 0
        assert torch.equal(out, expected)
        assert torch.equal(patched(x, 0.4, return_dict=False)[0], out)


def test_patch_size_one_builds_the_parent_unets_network():
    # With the same seed the weights are UNet2DModel's own, draw for draw, but for the zero output convolution.
    shape = dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
                 up_block_types=("UpBlock2D",) * 2, mid_block_type=None, norm_num_groups=4)
    torch.manual_seed(3)
    ours = ContinuousUNet2DModel(**shape, patch_size=1)
    torch.manual_seed(3)
    parent = UNet2DModel(**shape)
    assert ours.conv_in.in_channels == 3 and ours.downsample_factor == 2
    theirs = parent.state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    for name, weight in ours.state_dict().items():
        assert torch.equal(weight, torch.zeros_like(weight) if name.startswith("conv_out") else theirs[name]), name


def test_bad_patch_sizes_and_samples_raise_clear_errors():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=rf"patch_size must be a positive integer \(1: no patches\), got {bad!r}"):
            tiny_unet(patch_size=bad)
    with pytest.raises(ValueError, match=r"multiples of patch_size=2, got \(6, 7\)"):
        tiny_unet(patch_size=2)(torch.randn(1, 1, 6, 7), 0.5)


@pytest.mark.parametrize("option, value", [("patch_size", 2), ("position_channels", True)])
def test_a_patched_pipeline_round_trips_with_and_without_the_package(tmp_path, option, value):
    pipe = CosineDDIMPipeline(tiny_unet(channels=3, size=8, **{option: value}), CosineDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=5,
                     output_type="pt").images
    assert reference.shape == (2, 3, 8, 8)
    pipe.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model/unet/config.json").read_text())[option] == value
    loaded = CosineDDIMPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.unet.config[option] == value
    torch.testing.assert_close(loaded(batch_size=2, generator=torch.Generator().manual_seed(7),
                                      num_inference_steps=5, output_type="pt").images, reference)
    result = _sample_in_subprocess(tmp_path, tmp_path / "model", "trust_remote_code=True", block_package=True,
                                   env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert result["unet"].startswith("diffusers_modules")
    torch.testing.assert_close(result["images"], reference)


def test_training_a_patched_unet_saves_it_and_refuses_a_checkpoint_of_the_unpatched_one(tmp_path):
    args = lambda name, unet, *extra: parse_config(TINY + ["--output_dir", str(tmp_path / name), "--unet", unet,  # noqa: E731
                                                           "--max_train_steps", "2", *extra])
    folder = train(args("patched", PATCHED_UNET))
    pipe = CosineDDIMPipeline.from_pretrained(folder)
    assert pipe.unet.config.patch_size == 2 and pipe.unet.conv_in.in_channels == 4
    assert "16/16 on 2x2-pixel patches" in (Path(folder) / "README.md").read_text()
    plain = PATCHED_UNET.replace('"patch_size": 2', '"patch_size": 1')
    with pytest.raises(KeyboardInterrupt):
        train(args("other", PATCHED_UNET, "--checkpointing_steps", "1"), callbacks=[KillAfterCheckpoint(1)])
    with pytest.raises(ConfigError, match="patch_size=2 there, 1 in this config"):
        train(args("other", plain, "--resume_from_checkpoint", "latest"))
    with pytest.raises(ConfigError, match=r"resolution=8 is not divisible by 16.*patch_size=4, 3 levels"):
        train(args("deep", PATCHED_UNET.replace("[16, 16]", "[16, 16, 16]").replace('"patch_size": 2', '"patch_size": 4')))
