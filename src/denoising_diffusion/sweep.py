"""Run a grid of training configurations and tabulate them the way the R seed did.

    python -m denoising_diffusion.sweep configs/sweeps/seed_grid.yaml

Each combination of the spec's `grid` is trained through the normal training path (the base
config plus `overrides` plus the combination), then scored: `noise_loss` and `image_loss` (MAE
of the EMA model on the training data, fixed noise and times) and KID of its samples. Writes
`results.csv`, `results.md` and `samples.png` (a row of samples from the same noise per run).
"""

import argparse
import csv
import itertools
import json
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import torch
import yaml

from .evaluation.features import feature_extractor, resolve_features
from .evaluation.kid import extract_features, generate, kid_fid
from .pipelines.pipeline_cosine_ddim import CosineDDIMPipeline
from .training.config import ConfigError, parse_config
from .training.data import prepare_dataset
from .training.trainer import build_scheduler, diffusion_losses, image_grid, train


def _resolve(path: str, spec_file: Path) -> str:
    """A path as given if it exists from here, else relative to the spec's repository root."""
    if Path(path).exists():
        return path
    for base in (spec_file.parent, *spec_file.parents):
        if (base / path).exists():
            return str(base / path)
    raise ConfigError(f"base_config {path!r} not found (from {spec_file}).")


def _args(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        out += [f"--{key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return out


@torch.no_grad()
def validation_losses(pipe: CosineDDIMPipeline, dataset, config, batches: int, batch_size: int = 64) -> dict[str, float]:
    """Mean MAE on the noise and on the image over `batches` batches of `dataset` (fixed noise and times)."""
    generator = torch.Generator(device=pipe.device).manual_seed(1234)
    scheduler = build_scheduler(config)
    totals = {"noise_loss": 0.0, "image_loss": 0.0}
    count = 0
    for start in range(0, min(len(dataset), batches * batch_size), batch_size):
        pixels = dataset[start:start + batch_size]["pixel_values"].to(pipe.device).float() / 255.0
        losses = diffusion_losses(pipe.unet, scheduler, pipe.normalize(pixels), config, generator)
        for key in totals:
            totals[key] += losses[key].item()
        count += 1
    return {key: value / count for key, value in totals.items()}


def labelled_rows(rows: list[tuple[str, torch.Tensor]], tile: int = 48) -> PIL.Image.Image:
    """One image: for each (label, images (N, C, H, W)) a row of samples with the label on the left."""
    strips = [_row(images, tile) for _, images in rows]
    label_width = 170
    width = label_width + max(s.width for s in strips)
    canvas = PIL.Image.new("RGB", (width, sum(s.height for s in strips)), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    y = 0
    for (label, _), strip in zip(rows, strips):
        canvas.paste(strip.convert("RGB"), (label_width, y))
        draw.text((6, y + strip.height // 2 - 6), label, fill="black")
        y += strip.height
    return canvas


def _row(images: torch.Tensor, tile: int) -> PIL.Image.Image:
    tiles = [image_grid(image[None], min_tile=tile) for image in images]
    strip = PIL.Image.new(tiles[0].mode, (sum(t.width for t in tiles), tiles[0].height))
    for i, t in enumerate(tiles):
        strip.paste(t, (i * t.width, 0))
    return strip


def run_sweep(spec_path: str, output_dir: str | None = None) -> list[dict]:
    spec_file = Path(spec_path)
    spec = yaml.safe_load(spec_file.read_text())
    base = _resolve(spec["base_config"], spec_file)
    out = Path(output_dir or spec["output_dir"])
    evaluation = spec.get("evaluation", {})
    keys = list(spec["grid"])
    results, rows = [], []
    for combo in itertools.product(*(spec["grid"][k] for k in keys)):
        settings = dict(zip(keys, combo))
        name = "-".join(str(v) for v in combo)
        run_dir = out / name
        config = parse_config(["--config", base, *_args(spec.get("overrides", {})), *_args(settings),
                               "--output_dir", str(run_dir)])
        if not (run_dir / "model_index.json").exists():
            print(f"== training {name}", flush=True)
            config.overwrite_output_dir = True
            train(config)
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = CosineDDIMPipeline.from_pretrained(run_dir).to(device)
        pipe.set_progress_bar_config(disable=True)
        dataset = prepare_dataset(config)
        losses = validation_losses(pipe, dataset, config, evaluation.get("validation_batches", 20))
        features = resolve_features(evaluation.get("features", "auto"), config.dataset_name, config.train_data_dir)
        extractor = feature_extractor(features).to(device)
        real = dataset[:]["pixel_values"].float() / 255.0
        steps = evaluation.get("inference_steps", 20)
        fake, seconds = generate(pipe, evaluation.get("num_samples", 1000), steps)
        scores = kid_fid(extract_features(real, extractor), extract_features(fake, extractor))
        summary = json.loads((run_dir / "training_summary.json").read_text())
        results.append({**settings, **{k: round(v, 6) for k, v in losses.items()}, "kid": round(scores["kid"], 6),
                        "kid_std": round(scores["kid_std"], 6), "fid": round(scores["fid"], 4),
                        "train_minutes": round(summary["training_seconds"] / 60, 2)})
        rows.append((f"{name}  KID {scores['kid']:.4f}", fake[: evaluation.get("samples_per_row", 8)]))
        print(json.dumps(results[-1]), flush=True)

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    header = list(results[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in results]
    best = min(results, key=lambda r: r["kid"])
    lines += ["", f"Lowest KID: {', '.join(f'{k}={best[k]}' for k in keys)} ({best['kid']:.4f}); "
              f"KID with {features} features, {evaluation.get('num_samples', 1000)} samples at {steps} steps."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    labelled_rows(rows).save(out / "samples.png")
    print("\n".join(lines))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m denoising_diffusion.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="Sweep spec YAML (e.g. configs/sweeps/seed_grid.yaml).")
    parser.add_argument("--output_dir", default=None, help="Overrides the spec's output_dir.")
    args = parser.parse_args(argv)
    run_sweep(args.spec, args.output_dir)


if __name__ == "__main__":
    main()
