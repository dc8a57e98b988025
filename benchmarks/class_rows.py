"""One row of samples per class of a class-conditional pipeline, every row from the same noise.

    python benchmarks/class_rows.py --model outputs/emoji32 --out docs/emoji32_categories.png
    python benchmarks/class_rows.py --model outputs/digits_cond --out rows.png --guidance_scale 1.1 --steps 7

Each row asks for one class (named by the pipeline's `class_names` where it has them) with the
pipeline's saved scheduler, exactly as `pipe(class_labels=...)` samples it: its stored defaults for
calls given class labels, unless `--guidance_scale`, `--autoguidance_scale` or `--steps` say otherwise.
Prints the network evaluations per image.
"""

import argparse
from pathlib import Path

import torch

from denoising_diffusion import CosineDDIMPipeline
from denoising_diffusion.images import labelled_rows


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A saved class-conditional pipeline folder.")
    parser.add_argument("--out", required=True, help="The PNG to write.")
    parser.add_argument("--per_row", type=int, default=10)
    parser.add_argument("--guidance_scale", type=float, default=None, help="Default: the pipeline's stored one.")
    parser.add_argument("--autoguidance_scale", type=float, default=None, help="Default: the pipeline's stored one.")
    parser.add_argument("--steps", type=int, default=None, help="Default: the pipeline's stored step count.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pipe = CosineDDIMPipeline.from_pretrained(args.model)
    if pipe.null_class_label is None:
        raise SystemExit(f"{args.model} is an unconditional pipeline: it has no classes to draw rows of.")
    pipe.set_progress_bar_config(disable=True)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    noise = torch.randn((args.per_row, channels, size, size), generator=torch.Generator().manual_seed(args.seed))
    names = pipe.class_names or [str(c) for c in range(pipe.null_class_label)]
    rows = []
    for label, name in enumerate(names):
        images = pipe(batch_size=args.per_row, latents=noise.clone(), class_labels=[label] * args.per_row,
                      guidance_scale=args.guidance_scale, autoguidance_scale=args.autoguidance_scale,
                      num_inference_steps=args.steps, output_type="pt").images
        rows.append((name, images))
    cost = pipe.network_evaluations(args.steps, args.guidance_scale, args.autoguidance_scale, class_labels=True)
    steps = pipe.inference_steps(args.steps, class_labels_given=True)
    print(f"{len(names)} rows of {args.per_row}: {steps} steps, {cost} network evaluations per image")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    labelled_rows(rows).save(args.out)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
