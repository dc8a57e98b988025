import json

import numpy as np
import pytest
import torch

from denoising_diffusion import CosineDDIMPipeline, slerp


@pytest.fixture(scope="module")
def trained_pipe(tmp_path_factory):
    """A tiny model trained for 300 steps on the 8x8 digits: good enough for inversion to mean something."""
    from accelerate.state import AcceleratorState, GradientState

    from denoising_diffusion.training import parse_config, train

    unet = json.dumps({"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 4})
    out = train(parse_config(["--resolution", "8", "--train_batch_size", "32", "--logger", "none", "--unet", unet,
                              "--max_train_steps", "300", "--ema_decay", "0.99", "--num_grid_images", "4",
                              "--output_dir", str(tmp_path_factory.mktemp("inv") / "run")]))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    pipe = CosineDDIMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def real_digits(count=16):
    from denoising_diffusion.training.data import digits_dataset

    dataset = digits_dataset()
    return torch.stack([torch.from_numpy(np.array(dataset[i]["image"], dtype=np.float32) / 255.0)[None]
                        for i in range(count)])


def test_inversion_round_trip_error_falls_as_steps_grow(trained_pipe):
    images = real_digits()
    errors = {}
    for steps in (2, 10, 50):
        latents = trained_pipe.invert(images, steps)
        assert latents.shape == images.shape
        assert 0.8 < latents.std().item() < 1.2  # looks like the Gaussian noise the sampler starts from
        again = trained_pipe(latents=latents, num_inference_steps=steps, output_type="pt").images
        errors[steps] = (again - images).abs().mean().item()
    assert errors[50] < errors[10] < errors[2], errors
    assert errors[50] < 0.2 * errors[2] and errors[50] < 0.05, errors


def test_invert_accepts_pil_images(trained_pipe):
    images = real_digits(2)
    pil = trained_pipe.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())
    torch.testing.assert_close(trained_pipe.invert(pil, 5), trained_pipe.invert(images, 5), atol=1e-2, rtol=0)


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 16, 16, generator=g), torch.randn(1, 16, 16, generator=g)
    frames = slerp(a, b, [0.0, 0.5, 1.0])
    torch.testing.assert_close(frames[0], a)
    torch.testing.assert_close(frames[2], b)
    # Unlike the straight line, the arc keeps the norm of (nearly orthogonal) Gaussian noise.
    assert abs(frames[1].norm() - a.norm()) < 0.1 * a.norm()
    assert ((a + b) / 2).norm() < 0.8 * a.norm()
    same = slerp(a, a, [0.3])
    torch.testing.assert_close(same[0], a)


def test_interpolation_strip_between_two_inverted_images(trained_pipe):
    images = real_digits(2)
    start, end = trained_pipe.invert(images[:1], 20), trained_pipe.invert(images[1:], 20)
    strip = trained_pipe.interpolate(start, end, num_frames=5, num_inference_steps=20, output_type="pt")
    assert strip.shape == (5, 1, 8, 8)
    ends = trained_pipe(latents=torch.cat([start, end]), num_inference_steps=20, output_type="pt").images
    torch.testing.assert_close(strip[[0, -1]], ends, atol=1e-4, rtol=1e-4)
    assert (strip[2] - strip[0]).abs().mean() > 0.01 and (strip[2] - strip[-1]).abs().mean() > 0.01
