import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from denoising_diffusion import visualize
from denoising_diffusion.schedulers.noise_schedule import signal_noise_rates


def test_forward_diffusion_rows_follow_each_schedule():
    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    fig = visualize.forward_diffusion_figure(image, num_steps=5, mean=0.5, std=0.5)
    axes = np.array(fig.axes).reshape(2, 5)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    for row, schedule in enumerate(["linear", "cosine"]):
        signal, sigma = signal_noise_rates(torch.tensor(0.5), schedule, 0.02, 0.95)
        expected = ((signal * (image - 0.5) / 0.5 + sigma * noise) * 0.5 + 0.5).clamp(0, 1)[0]
        shown = axes[row, 2].get_images()[0].get_array()
        np.testing.assert_allclose(np.asarray(shown), expected.numpy(), atol=1e-5)


def test_rates_and_embedding_figures_plot_the_real_functions():
    fig = visualize.rates_figure(0.1, 0.9)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4
    t, signal = lines[0].get_data()
    np.testing.assert_allclose(signal, signal_noise_rates(torch.as_tensor(t), "cosine", 0.1, 0.9)[0].numpy(), atol=1e-6)
    fig = visualize.embedding_figure(dim=16, rows=10)
    values = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert values.shape == (10, 16) and values.min() >= -1 and values.max() <= 1


def test_command_writes_the_pictures(trained, tmp_path):
    result = subprocess.run([sys.executable, "-m", "denoising_diffusion.visualize", "--model", str(trained),
                             "--output_dir", str(tmp_path), "--steps", "4"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ["forward_diffusion.png", "rates.png", "embedding.png", "forward_reverse.png", "interpolation.png"]:
        with Image.open(tmp_path / name) as image:
            assert image.width > 200 and image.height > 100
