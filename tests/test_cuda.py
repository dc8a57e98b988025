"""CUDA paths: resume with EMA, fp16/bf16 training and resume, half-precision sampling without host
syncs. Skipped without a CUDA device (CI has none); run the whole suite on a GPU machine with
`python -m pytest -q tests` and these run too."""

import warnings

import pytest
import torch

from conftest import tiny_pipeline, tiny_unet
from denoising_diffusion.training import Trainer
from test_training import config_for, straight_and_resumed, unet_weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def assert_close_weights(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.isfinite(a[key].float()).all(), key
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=0, atol=atol)


@pytest.mark.parametrize("mixed_precision", ["no", "bf16", "fp16"])
def test_resume_with_ema_on_cuda(tmp_path, mixed_precision):
    # EMA is on by default; load_state restores it on the CPU and the trainer must move it back.
    common = ["--max_train_steps", 4, "--checkpointing_steps", 2, "--mixed_precision", mixed_precision]
    straight, resumed = straight_and_resumed(tmp_path, common, kill_after_step=2)
    # cuDNN picks kernels per run, so bitwise equality is not promised on GPUs; the runs must agree closely.
    assert_close_weights(unet_weights(straight), unet_weights(resumed), atol=1e-3 if mixed_precision == "no" else 2e-2)


def test_ema_shadow_weights_are_on_the_gpu_after_resume(tmp_path):
    from denoising_diffusion.training import train

    train(config_for(tmp_path, "--max_train_steps", 2, "--checkpointing_steps", 2))
    trainer = Trainer(config_for(tmp_path, "--max_train_steps", 3, "--resume_from_checkpoint", "latest"))
    trainer.resume()
    assert all(p.device.type == "cuda" for p in trainer.ema.shadow_params)
    trainer.ema.step(trainer.unet.parameters())  # mixed devices would raise here


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sampling_on_cuda(dtype):
    pipe = tiny_pipeline(image_mean=[0.4], image_std=[0.3]).to("cuda")
    latents = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to("cuda")
    full = pipe(latents=latents, num_inference_steps=5, output_type="pt").images
    pipe.to(dtype)
    half = pipe(latents=latents, num_inference_steps=5, output_type="pt").images
    assert half.device.type == "cuda" and torch.isfinite(half).all()
    assert (half.float() - full).abs().mean() < 0.05


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_sampling_does_not_sync_with_the_host_at_every_step(scheduler):
    from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler, CosineDPMSolverScheduler

    pipe = CosineDDIMPipeline(tiny_unet(num_class_embeds=4), CosineDDIMScheduler()).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    if scheduler == "dpm":
        pipe.scheduler = CosineDPMSolverScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn(2, 1, 8, 8, device="cuda")

    def syncs(steps):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pipe(latents=latents, num_inference_steps=steps, output_type="pt", class_labels=None)
                pipe(latents=latents, num_inference_steps=steps, output_type="pt", class_labels=[1, 2], guidance_scale=2.0)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(8) == syncs(2)  # a constant number per call, none per step
