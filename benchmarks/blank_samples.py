"""How many samples come out (nearly) blank, against the real images, and how that depends on the
starting noise's mean.

    python benchmarks/blank_samples.py --model outputs/emoji32 --config configs/emoji32.yaml [--num_samples 900]

"Ink" is the fraction of an image's pixels that are not near-white (some channel below 0.85); a
sample with under 5% ink is counted blank. For `pipe()` and, on a class-conditional model,
`pipe(class_labels=...)` (every class in turn), both with the saved defaults and from the same noise,
it prints the blank share, the blank share for starting noise whose mean (as a z-score:
mean * sqrt(number of values)) falls in each of four bins, and the correlation between ink and that
z-score. Real images of `--config`'s dataset give the reference share.
"""

import argparse

import torch

from denoising_diffusion import CosineDDIMPipeline


def ink(images: torch.Tensor) -> torch.Tensor:
    """Per image in [0, 1] (B, C, H, W): the fraction of pixels with some channel below 0.85."""
    return (images < 0.85).any(1).float().mean((1, 2))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", required=True, help="The training config, for the real images.")
    parser.add_argument("--num_samples", type=int, default=900)
    parser.add_argument("--batch_size", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from denoising_diffusion.training import parse_config
    from denoising_diffusion.training.data import prepare_dataset

    config = parse_config(["--config", args.config, "--output_dir", "outputs/blank_samples"])
    images = prepare_dataset(config)
    real = ink(images.pixels(images.num_examples or args.num_samples).float() / 255.0)
    print(f"real images ({len(real)}): blank {(real < 0.05).float().mean():.3f}, mean ink {real.mean():.3f}")

    pipe = CosineDDIMPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    noise = torch.randn(args.num_samples, channels, size, size, generator=torch.Generator().manual_seed(args.seed))
    z = noise.mean((1, 2, 3)) * noise[0].numel() ** 0.5
    calls = {"pipe()": None}
    if pipe.null_class_label is not None:
        calls["pipe(class_labels=...)"] = torch.arange(args.num_samples) % pipe.null_class_label
    for name, labels in calls.items():
        generator = torch.Generator().manual_seed(args.seed)  # the classes pipe() draws, reproducibly
        batches = []
        for start in range(0, args.num_samples, args.batch_size):
            part = slice(start, start + args.batch_size)
            kwargs = {} if labels is None else {"class_labels": labels[part]}
            batches.append(pipe(latents=noise[part], generator=generator, output_type="pt", **kwargs).images)
        amount = ink(torch.cat(batches))
        blank = amount < 0.05
        bins = " ".join(f"z in [{lo}, {hi}): {blank[(z >= lo) & (z < hi)].float().mean():.3f} of "
                        f"{int(((z >= lo) & (z < hi)).sum())};" for lo, hi in ((-9, 0), (0, 1), (1, 2), (2, 9)))
        correlation = float(torch.corrcoef(torch.stack([amount, z]))[0, 1])
        print(f"{name}: blank {blank.float().mean():.3f}, mean ink {amount.mean():.3f}; blank share by the noise's "
              f"mean: {bins} correlation of ink with it {correlation:.2f}")


if __name__ == "__main__":
    main()
