"""The pictures of the R/torch port of the Keras DDIM example (Falbel 2023), with matplotlib:
forward diffusion under each schedule, signal/noise rate curves, the sinusoidal noise embedding,
forward vs reverse diffusion, plus interpolation strips and one row per class for conditional models.

    python -m denoising_diffusion.visualize --model outputs/digits --output_dir docs/

Each function returns a `matplotlib.figure.Figure`; the command saves them as PNGs.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .models.unet_continuous import SinusoidalNoiseVarianceEmbedding  # noqa: E402
from .schedulers.noise_schedule import SCHEDULES, signal_noise_rates  # noqa: E402


def _show(ax, image: torch.Tensor, title: str | None = None):
    """Draw one (C, H, W) image in [0, 1]."""
    array = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    ax.imshow(array.squeeze(-1) if array.shape[-1] == 1 else array, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def forward_diffusion_figure(image: torch.Tensor, num_steps: int = 10, min_signal_rate: float = 0.02,
                             max_signal_rate: float = 0.95, seed: int = 0, mean: float = 0.5, std: float = 0.5):
    """Samples of q(x_t | x_0) at evenly spaced t, one row per schedule (linear, cosine), same noise.

    `image` is (C, H, W) in [0, 1]; it is standardised with `mean`/`std` as the model sees it, and the
    noisy samples are mapped back the same way for display.
    """
    times = torch.linspace(0, 1, num_steps)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    x0 = (image - mean) / std
    fig, axes = plt.subplots(2, num_steps, figsize=(1.1 * num_steps, 2.6))
    for row, schedule in enumerate(("linear", "cosine")):
        signal, sigma = signal_noise_rates(times, schedule, min_signal_rate, max_signal_rate)
        for col, t in enumerate(times):
            x_t = signal[col] * x0 + sigma[col] * noise
            _show(axes[row, col], x_t * std + mean, f"t={t:.2f}" if row == 0 else None)
        axes[row, 0].set_ylabel(schedule, fontsize=9)
    fig.suptitle("Forward diffusion q(x_t | x_0): linear (top) vs cosine (bottom) schedule", fontsize=10)
    fig.tight_layout()
    return fig


def rates_figure(min_signal_rate: float = 0.02, max_signal_rate: float = 0.95):
    """Signal and noise rates against diffusion time for both schedules."""
    t = torch.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for schedule, style in zip(SCHEDULES, ("-", "--")):
        signal, noise = signal_noise_rates(t, schedule, min_signal_rate, max_signal_rate)
        ax.plot(t, signal, style, color="tab:blue", label=f"signal rate ({schedule})")
        ax.plot(t, noise, style, color="tab:orange", label=f"noise rate ({schedule})")
    ax.set_xlabel("diffusion time t")
    ax.set_ylabel("rate")
    ax.set_title(f"Signal and noise rates (signal in [{min_signal_rate}, {max_signal_rate}])", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def embedding_figure(dim: int = 32, schedule: str = "cosine", min_signal_rate: float = 0.02,
                     max_signal_rate: float = 0.95, rows: int = 100):
    """Heat map of the sinusoidal embedding of the noise variance: one row per diffusion time."""
    embed = SinusoidalNoiseVarianceEmbedding(dim, schedule, min_signal_rate, max_signal_rate)
    t = torch.linspace(0, 1, rows)
    with torch.no_grad():
        values = embed(t).numpy()
    fig, ax = plt.subplots(figsize=(5, 4))
    image = ax.imshow(values, aspect="auto", cmap="RdBu", extent=(0, dim, 1, 0))
    ax.set_xlabel("embedding dimension (sin | cos)")
    ax.set_ylabel("diffusion time t")
    ax.set_title(f"Sinusoidal embedding of the noise variance (dim {dim}, {schedule})", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


@torch.no_grad()
def forward_reverse_figure(pipe, image: torch.Tensor, num_steps: int = 10, seed: int = 0):
    """Forward diffusion of `image` (top) and reverse diffusion from the final noise (bottom).

    The noise the forward process ends in is the starting noise of the reverse (DDIM) process,
    as in the R/torch port's figure. Bottom row shows the sampler's state x_t at each step.
    """
    scheduler = pipe.scheduler
    device = pipe.device
    x0 = pipe.normalize(image[None].to(device))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    times = torch.linspace(0, 1, num_steps + 1)
    fig, axes = plt.subplots(2, num_steps + 1, figsize=(1.1 * (num_steps + 1), 2.7))
    for col, t in enumerate(times):
        x_t = scheduler.add_noise(x0, noise, t.to(device))
        _show(axes[0, col], pipe.denormalize(x_t)[0], f"t={t:.1f}")
    scheduler.set_timesteps(num_steps, device=device)
    x = scheduler.add_noise(x0, noise, torch.tensor(1.0, device=device)).to(pipe.unet.dtype)
    _show(axes[1, 0], pipe.denormalize(x)[0])
    for col, t in enumerate(scheduler.timesteps, start=1):
        x = scheduler.step(pipe.predict(x, t), t, x).prev_sample
        _show(axes[1, col], pipe.denormalize(x)[0])
    axes[0, 0].set_ylabel("forward", fontsize=9)
    axes[1, 0].set_ylabel("reverse", fontsize=9)
    fig.tight_layout()
    return fig


def strip_figure(images: torch.Tensor, title: str):
    """A row of (N, C, H, W) images in [0, 1]."""
    fig, axes = plt.subplots(1, len(images), figsize=(1.1 * len(images), 1.5))
    for ax, image in zip(np.atleast_1d(axes), images):
        _show(ax, image)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@torch.no_grad()
def class_rows_figure(pipe, per_class: int = 8, guidance_scale: float = 2.0, num_inference_steps: int = 20,
                      seed: int = 0):
    """One row of samples per class of a class-conditional pipeline."""
    classes = pipe.null_class_label
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = pipe(batch_size=len(labels), class_labels=labels, guidance_scale=guidance_scale,
                  num_inference_steps=num_inference_steps, generator=torch.Generator(pipe.device).manual_seed(seed),
                  output_type="pt").images
    fig, axes = plt.subplots(classes, per_class, figsize=(0.9 * per_class, 0.9 * classes))
    for i, image in enumerate(images):
        _show(axes[i // per_class, i % per_class], image)
        if i % per_class == 0:
            axes[i // per_class, 0].set_ylabel(str(i // per_class), fontsize=8, rotation=0, labelpad=8)
    fig.suptitle(f"One row per class, guidance scale {guidance_scale}", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    from .pipelines.pipeline_cosine_ddim import CosineDDIMPipeline
    from .digits import digits_dataset

    parser = argparse.ArgumentParser(prog="python -m denoising_diffusion.visualize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="A saved pipeline (for the forward/reverse, interpolation "
                                                      "and per-class figures).")
    parser.add_argument("--output_dir", default="docs")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    pipe = None
    if args.model:
        pipe = CosineDDIMPipeline.from_pretrained(args.model)
        pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size if pipe else 16
    digit = torch.from_numpy(np.array(digits_dataset()[0]["image"], dtype=np.float32) / 255.0)[None, None]
    digit = torch.nn.functional.interpolate(digit, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    config = pipe.scheduler.config if pipe else {"min_signal_rate": 0.02, "max_signal_rate": 0.95, "schedule": "cosine"}
    mean = pipe.config.image_mean[0] if pipe else 0.5
    std = pipe.config.image_std[0] if pipe else 0.5
    save(forward_diffusion_figure(digit, args.steps, config["min_signal_rate"], config["max_signal_rate"],
                                  mean=mean, std=std), "forward_diffusion.png")
    save(rates_figure(config["min_signal_rate"], config["max_signal_rate"]), "rates.png")
    save(embedding_figure(32, config["schedule"], config["min_signal_rate"], config["max_signal_rate"]),
         "embedding.png")
    if pipe is not None:
        if pipe.unet.config.in_channels == 1:
            save(forward_reverse_figure(pipe, digit, args.steps), "forward_reverse.png")
        g = torch.Generator().manual_seed(1)
        shape = (1, pipe.unet.config.in_channels, size, size)
        a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        strip = pipe.interpolate(a, b, num_frames=10, num_inference_steps=20, output_type="pt")
        save(strip_figure(strip, "Spherical interpolation between two noises"), "interpolation.png")
        if pipe.null_class_label is not None:
            save(class_rows_figure(pipe), "classes.png")
    for path in written:
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()
