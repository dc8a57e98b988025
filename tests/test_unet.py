import math

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput

from conftest import tiny_unet
from denoising_diffusion import ContinuousUNet2DModel
from denoising_diffusion.schedulers.noise_schedule import signal_noise_rates


def test_is_a_unet2dmodel_with_seed_defaults_and_zero_output():
    model = ContinuousUNet2DModel()
    assert isinstance(model, UNet2DModel)
    assert tuple(model.config.block_out_channels) == (32, 64, 96, 128)
    assert model.config.layers_per_block == 2 and model.config.sample_size == 64
    assert model.downsample_factor == 8
    # The README states this parameter count for the default model.
    assert sum(p.numel() for p in model.parameters()) == 4_323_683
    out = model(torch.randn(2, 3, 64, 64), 0.5)
    assert isinstance(out, UNet2DOutput) and out.sample.shape == (2, 3, 64, 64)
    assert torch.count_nonzero(out.sample) == 0  # zero-initialised output convolution


def test_embedding_is_sinusoidal_in_noise_variance_with_log_spaced_frequencies():
    model = tiny_unet(schedule="linear", min_signal_rate=0.1, max_signal_rate=0.9)
    t = torch.tensor([0.0, 0.3, 1.0])
    emb = model.time_proj(t)
    dim = model.config.block_out_channels[0]
    freqs = torch.exp(torch.linspace(math.log(1.0), math.log(1000.0), dim // 2))
    variance = signal_noise_rates(t, "linear", 0.1, 0.9)[1] ** 2
    angles = 2 * math.pi * variance[:, None] * freqs[None]
    # Angles reach 2*pi*1000 rad, where float32 keeps about 1e-3 rad of precision.
    torch.testing.assert_close(emb, torch.cat([angles.sin(), angles.cos()], dim=-1), atol=2e-3, rtol=0)


def test_continuous_timesteps_are_not_rounded_and_scalar_equals_batched():
    model = tiny_unet().eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        a = model(x, 0.30).sample
        b = model(x, 0.31).sample
        c = model(x, torch.tensor([0.30, 0.30])).sample
        d = model(x, torch.tensor(0.30)).sample
        e = model(x, torch.tensor([0.30, 0.9])).sample
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(a, d)
    torch.testing.assert_close(a[0], e[0])
    assert not torch.allclose(a[1], e[1])


def test_bad_inputs_raise_clear_errors():
    model = tiny_unet()
    with pytest.raises(ValueError, match=r"timestep must be a scalar or have shape \(2,\), got shape \(3,\)"):
        model(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="divisible by norm_num_groups=8"):
        ContinuousUNet2DModel(block_out_channels=(12, 24, 36, 48))
    with pytest.raises(ValueError, match="Unknown schedule 'cos'"):
        ContinuousUNet2DModel(schedule="cos")
    with pytest.raises(ValueError, match="time_embedding_type must be 'positional'"):
        ContinuousUNet2DModel(time_embedding_type="fourier")


def test_class_conditioning_and_save_load(tmp_path):
    model = tiny_unet(num_class_embeds=10).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        a = model(x, 0.5, class_labels=torch.tensor([1, 2])).sample
        b = model(x, 0.5, class_labels=torch.tensor([3, 2])).sample
    assert not torch.allclose(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = ContinuousUNet2DModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 0.5, class_labels=torch.tensor([1, 2])).sample, a)
