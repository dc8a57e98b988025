import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import ImagePipelineOutput

from conftest import UNCLIPPED_STD, tiny_pipeline
from denoising_diffusion import CosineDDIMPipeline


@pytest.mark.parametrize("channels", [1, 3])
def test_output_types_shapes_and_range(channels):
    pipe = tiny_pipeline(channels=channels)
    out = pipe(batch_size=2, num_inference_steps=3, output_type="pt")
    assert isinstance(out, ImagePipelineOutput)
    assert out.images.shape == (2, channels, 8, 8)
    assert out.images.min() >= 0 and out.images.max() <= 1
    arr = pipe(batch_size=2, num_inference_steps=3, output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 8, 8, channels)
    pil = pipe(batch_size=2, num_inference_steps=3).images
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image)
    assert pil[0].mode == ("L" if channels == 1 else "RGB") and pil[0].size == (8, 8)
    (images,) = pipe(num_inference_steps=1, output_type="pt", return_dict=False)
    assert images.shape == (1, channels, 8, 8)


def test_generators_make_it_reproducible_and_a_list_works_per_image():
    pipe = tiny_pipeline()
    run = lambda g, **kw: pipe(batch_size=2, generator=g, num_inference_steps=4, output_type="pt", **kw).images  # noqa: E731
    a = run(torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, run(torch.Generator().manual_seed(0)))
    assert not torch.allclose(a, run(torch.Generator().manual_seed(1)))
    listed = run([torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    single = pipe(batch_size=1, generator=torch.Generator().manual_seed(6), num_inference_steps=4, output_type="pt").images
    torch.testing.assert_close(listed[1:], single, atol=1e-4, rtol=1e-4)  # batch-size-dependent conv kernels
    stochastic = run(torch.Generator().manual_seed(0), eta=1.0)
    torch.testing.assert_close(stochastic, run(torch.Generator().manual_seed(0), eta=1.0))
    assert not torch.allclose(stochastic, a)


def test_bad_arguments_raise_clear_errors():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1, got 0"):
        pipe(num_inference_steps=0)
    with pytest.raises(ValueError, match="output_type must be one of .* got 'latent'"):
        pipe(output_type="latent")
    with pytest.raises(ValueError, match="3 generators for batch_size=2"):
        pipe(batch_size=2, generator=[torch.Generator()] * 3)
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 1, 8, 8\)"):
        pipe(latents=torch.randn(2, 3, 8, 8))
    nan_noise = torch.randn(2, 1, 8, 8)
    nan_noise[1, 0, 3, :2] = float("nan")
    with pytest.raises(ValueError, match="latents must be finite; 2 of their 128 values are NaN or inf"):
        pipe(latents=nan_noise, num_inference_steps=2)
    with pytest.raises(ValueError, match="image_mean needs one value per channel"):
        CosineDDIMPipeline(pipe.unet, pipe.scheduler, image_mean=[0.1, 0.2])


def test_latents_and_normalisation_are_used():
    pipe = tiny_pipeline(image_mean=[0.25], image_std=[0.1])
    latents = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = pipe(latents=latents, num_inference_steps=3, output_type="pt").images
    raw = tiny_pipeline(image_mean=[0.5], image_std=[UNCLIPPED_STD])  # unclipped: the model-space sample itself
    raw.unet.load_state_dict(pipe.unet.state_dict())
    b = raw(latents=latents, num_inference_steps=3, output_type="pt").images
    assert ((b > 0) & (b < 1)).all()
    # Same model-space sample, mapped back with different statistics: x * std + mean, clipped.
    x = (b.double() - 0.5) / UNCLIPPED_STD
    expected = (x * 0.1 + 0.25).clamp(0, 1).float()
    assert (expected == 0).any() and ((expected > 0) & (expected < 1)).any()  # both clipped and kept pixels
    torch.testing.assert_close(a, expected)


def test_runs_on_cpu_and_in_bfloat16():
    pipe = tiny_pipeline().to("cpu")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        torch.nn.init.normal_(pipe.unet.conv_out.weight, std=0.01, generator=g())  # images not saturated
    full = pipe(batch_size=4, generator=g(), num_inference_steps=3, output_type="pt").images
    pipe.to(torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    half = pipe(batch_size=4, generator=g(), num_inference_steps=3, output_type="np").images
    assert half.dtype == np.float32 and np.isfinite(half).all()
    assert np.abs(half.transpose(0, 3, 1, 2) - full.numpy()).mean() < 0.05


SAMPLE = """
import sys, torch
{block}
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({path!r}, {kwargs})
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=5, output_type="pt").images
torch.save({{"images": images, "pipeline": type(pipe).__module__, "unet": type(pipe.unet).__module__}}, {out!r})
"""


def _sample_in_subprocess(tmp_path, path, kwargs, block_package, env=None):
    out = tmp_path / "out.pt"
    block = "sys.modules['denoising_diffusion'] = None" if block_package else ""
    code = SAMPLE.format(block=block, path=str(path), kwargs=kwargs, out=str(out))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


def _reference(pipe):
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=5, output_type="pt").images


def test_save_pretrained_writes_safetensors_and_the_code_the_folder_needs(tmp_path):
    pipe = tiny_pipeline(image_mean=[0.4], image_std=[0.3])
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_cosine_ddim", "CosineDDIMPipeline"]
    assert index["unet"] == ["unet_continuous", "ContinuousUNet2DModel"]
    assert index["scheduler"] == ["scheduling_cosine_ddim", "CosineDDIMScheduler"]
    assert index["image_mean"] == [0.4] and index["image_std"] == [0.3]
    for f in ["pipeline_cosine_ddim.py", "unet/unet_continuous.py", "unet/noise_schedule.py",
              "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduling_cosine_ddim.py",
              "scheduler/noise_schedule.py"]:
        assert (tmp_path / f).is_file(), f
    # Bundled modules import their siblings, not the package.
    assert "from .noise_schedule import" in (tmp_path / "unet/unet_continuous.py").read_text()
    assert "denoising_diffusion" not in (tmp_path / "unet/unet_continuous.py").read_text()


def test_path_a_package_class_loads_without_remote_code(tmp_path):
    pipe = tiny_pipeline(image_mean=[0.4], image_std=[0.3])
    pipe.save_pretrained(tmp_path)
    loaded = CosineDDIMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.unet).__module__ == "denoising_diffusion.models.unet_continuous"
    assert loaded.config.image_mean == [0.4]
    torch.testing.assert_close(_reference(loaded), _reference(pipe))
    as_bf16 = CosineDDIMPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert as_bf16.unet.dtype == torch.bfloat16


def test_path_a_refuses_folder_code_unless_trusted(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path)
    from diffusers import DiffusionPipeline

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(tmp_path)


def test_path_b_plain_diffusers_with_trust_remote_code_and_package_blocked(tmp_path):
    pipe = tiny_pipeline(image_mean=[0.4], image_std=[0.3])
    pipe.save_pretrained(tmp_path / "model")
    result = _sample_in_subprocess(tmp_path, tmp_path / "model", "trust_remote_code=True", block_package=True,
                                   env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert result["pipeline"].startswith("diffusers_modules")
    assert result["unet"].startswith("diffusers_modules")
    torch.testing.assert_close(result["images"], _reference(pipe))


def _fake_hub_cache(cache_dir, repo_id, folder):
    """Lay out `folder` in a Hugging Face cache the way a download by `repo_id` leaves it."""
    import shutil

    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)


def test_path_c_repo_id_from_local_cache_offline(tmp_path, monkeypatch):
    pipe = tiny_pipeline(image_mean=[0.4], image_std=[0.3])
    pipe.save_pretrained(tmp_path / "model")
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "someone/tiny-ddim", tmp_path / "model")
    code = f"""
import sys, torch
from denoising_diffusion import CosineDDIMPipeline
pipe = CosineDDIMPipeline.from_pretrained("someone/tiny-ddim")
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=5, output_type="pt").images
torch.save({{"images": images}}, {str(tmp_path / 'c.pt')!r})
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "c.pt")["images"], _reference(pipe))
