"""Pictures of sampling settings side by side: one row per setting, every row from the same noise.

    python benchmarks/guidance_rows.py --model outputs/digits --out docs/autoguidance_digits.png
    python benchmarks/guidance_rows.py --model outputs/emoji32 --out docs/emoji32_autoguidance.png --per_row 12

Rows: 10 unguided DPM-Solver++(2M) steps, then autoguidance at growing weights inside the interval
(0.4, 4] (7 steps: 10 network evaluations per image), then the pipeline's saved defaults. A
class-conditional model can be given `--class_label` (an index or a class name) for every sample.
"""

import argparse
from pathlib import Path

import torch

from denoising_diffusion import CosineDDIMPipeline, CosineDPMSolverScheduler
from denoising_diffusion.images import labelled_rows

INTERVAL = (0.4, 4.0)


def settings(pipe, weights: list[float]) -> list[tuple[str, dict]]:
    rows = [("unguided, 10 steps", {"num_inference_steps": 10, "autoguidance_scale": 1.0})]
    if pipe.guide_unet is not None:
        rows += [(f"autoguidance {w:g}, 7 steps", {"num_inference_steps": 7, "autoguidance_scale": w,
                                                    "guidance_interval": INTERVAL}) for w in weights]
    defaults = pipe.config.get("sampling_defaults") or {}
    if defaults:
        label = ", ".join(f"{k.replace('num_inference_steps', 'steps').replace('autoguidance_scale', 'w')} {v}"
                          for k, v in defaults.items() if k != "guidance_interval")
        rows.append((f"saved defaults ({label})", {}))
    return rows


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A saved pipeline folder.")
    parser.add_argument("--out", required=True, help="The PNG to write.")
    parser.add_argument("--per_row", type=int, default=16)
    parser.add_argument("--weights", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--class_label", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pipe = CosineDDIMPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    saved_scheduler = pipe.scheduler
    solver = CosineDPMSolverScheduler.from_config(pipe.scheduler.config)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    noise = torch.randn((args.per_row, channels, size, size), generator=torch.Generator().manual_seed(args.seed))
    labels = None
    if args.class_label is not None:
        label = int(args.class_label) if args.class_label.isdigit() else args.class_label
        labels = [label] * args.per_row
    rows = []
    for name, kwargs in settings(pipe, args.weights):
        pipe.scheduler = saved_scheduler if not kwargs else solver
        images = pipe(batch_size=args.per_row, latents=noise.clone(), class_labels=labels, output_type="pt",
                      **kwargs).images
        rows.append((name, images))
        cost = pipe.network_evaluations(kwargs.get("num_inference_steps"), 1.0, kwargs.get("autoguidance_scale"),
                                        kwargs.get("guidance_interval"), class_labels=labels is not None)
        print(f"{name}: {cost} network evaluations per image")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    labelled_rows(rows, label_width=220).save(args.out)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
