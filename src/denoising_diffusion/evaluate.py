"""Evaluate a saved pipeline: KID (and FID) against real images at several step counts.

    python -m denoising_diffusion.evaluate --model outputs/digits --num_samples 1000 --steps 10 20 50

The real images come from the dataset the model was trained on (its `training_config.yaml`, or
`--dataset`), preprocessed the same way. Prints a markdown table and writes JSON.
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
import yaml

from .evaluation.features import DigitsFeatures, feature_extractor, resolve_features
from .evaluation.kid import extract_features, generate, kid_fid
from .pipelines.pipeline_cosine_ddim import CosineDDIMPipeline
from .training.config import ConfigError, TrainingConfig
from .training.data import prepare_dataset


def model_folder(model: str) -> Path:
    if os.path.isdir(model):
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model))


def data_config(folder: Path, pipe: CosineDDIMPipeline, dataset: str | None, image_column: str | None,
                train_data_dir: str | None) -> TrainingConfig:
    """The data half of the model's training config (or of the built-in digits), with overrides."""
    saved = folder / "training_config.yaml"
    values = yaml.safe_load(saved.read_text()) if saved.exists() else {}
    keep = {"dataset_name", "dataset_config_name", "dataset_split", "train_data_dir", "image_column"}
    values = {k: v for k, v in values.items() if k in keep}
    size = pipe.unet.config.sample_size
    values.update(resolution=size if isinstance(size, int) else size[0], channels=pipe.unet.config.in_channels,
                  center_crop=True, label_column=None, streaming=False)
    if dataset is not None:
        values.update(dataset_name=dataset, train_data_dir=None)
    if train_data_dir is not None:
        values["train_data_dir"] = train_data_dir
    if image_column is not None:
        values["image_column"] = image_column
    return TrainingConfig(**values)


def real_images(config: TrainingConfig, limit: int) -> torch.Tensor:
    dataset = prepare_dataset(config)
    count = min(limit, len(dataset))
    return dataset.select(range(count))[:]["pixel_values"].float().div(255.0)


def score_samples(fake: torch.Tensor, real_features: torch.Tensor, extractor: torch.nn.Module,
                  batch_size: int = 256) -> dict[str, float]:
    """KID/FID of samples (N, C, H, W) in [0, 1] against precomputed real features; with the digits
    features also the fraction the classifier recognises with p >= 0.9 (`recognised`)."""
    scores = kid_fid(real_features, extract_features(fake, extractor, batch_size))
    if isinstance(extractor, DigitsFeatures):
        scores["recognised"] = extractor.recognised_fraction(fake)
    return scores


def evaluate(model: str, steps: list[int], num_samples: int = 1000, features="auto",
             dataset: str | None = None, image_column: str | None = None, train_data_dir: str | None = None,
             inception_weights: str | None = None, num_real: int = 10000, batch_size: int = 256, seed: int = 0,
             device: str | None = None) -> dict:
    """KID/FID of `model`'s samples at each step count; returns a JSON-ready dict.

    `features` is "auto", "digits", "inception" or any `nn.Module` mapping images (N, C, H, W) in
    [0, 1] to features (N, D).
    """
    folder = model_folder(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = CosineDDIMPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    config = data_config(folder, pipe, dataset, image_column, train_data_dir)
    features = resolve_features(features, config.dataset_name, config.train_data_dir)
    if isinstance(features, torch.nn.Module):
        extractor, features = features.to(device), type(features).__name__
    else:
        extractor = feature_extractor(features, inception_weights).to(device)
    real = real_images(config, num_real)
    real_features = extract_features(real, extractor, batch_size)
    # The floor: KID between two random halves of the real images (what a perfect model scores).
    halves = real_features[torch.randperm(len(real_features), generator=torch.Generator().manual_seed(seed))]
    floor = kid_fid(halves[: len(halves) // 2], halves[len(halves) // 2:], subset_size=min(num_samples, 1000))
    rows = []
    for n in steps:
        fake, seconds = generate(pipe, num_samples, n, batch_size=batch_size, seed=seed)
        scores = score_samples(fake, real_features, extractor, batch_size)
        rows.append({"steps": n, **scores, "seconds": seconds, "images_per_second": num_samples / seconds})
    result = {
        "model": str(model), "dataset": config.train_data_dir or config.dataset_name, "num_real": len(real),
        "num_samples": num_samples, "features": features, "seed": seed, "device": str(device),
        "real_vs_real": {"kid": floor["kid"], "kid_std": floor["kid_std"], "fid": floor["fid"]},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "results": rows,
    }
    if features == "digits":
        result["feature_extractor_test_accuracy"] = extractor.test_accuracy
        result["real_vs_real"]["recognised"] = extractor.held_out_recognised_fraction()
    return result


def markdown_table(result: dict) -> str:
    recognised = "recognised" in result["results"][0] if result["results"] else False
    extra = (" recognised (p >= 0.9) |", " ---: |") if recognised else ("", "")
    lines = [f"| steps | KID | FID | time (s) | images/s |{extra[0]}", f"| ---: | :--- | ---: | ---: | ---: |{extra[1]}"]
    for row in result["results"]:
        cell = f" {row['recognised']:.1%} |" if recognised else ""
        lines.append(f"| {row['steps']} | {row['kid']:.4f} ± {row['kid_std']:.4f} | {row['fid']:.3f} | "
                     f"{row['seconds']:.1f} | {row['images_per_second']:.1f} |{cell}")
    if "real_vs_real" in result:
        floor = result["real_vs_real"]
        cell = f" {floor['recognised']:.1%} (held-out real digits) |" if recognised else ""
        lines.append(f"| real vs real | {floor['kid']:.4f} ± {floor['kid_std']:.4f} | {floor['fid']:.3f} | | |{cell}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m denoising_diffusion.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Saved pipeline folder or Hub repo id.")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50], help="Sampling step counts.")
    parser.add_argument("--num_samples", type=int, default=1000, help="Generated images per step count.")
    parser.add_argument("--num_real", type=int, default=10000, help="At most this many real images.")
    parser.add_argument("--dataset", default=None, help="Real images: dataset id/path (default: the model's).")
    parser.add_argument("--train_data_dir", default=None, help="Real images: an image folder instead.")
    parser.add_argument("--image_column", default=None, help="Image column of --dataset.")
    parser.add_argument("--features", default="auto", choices=["auto", "digits", "inception"],
                        help="Feature extractor (auto: digits classifier for the built-in digits, else Inception).")
    parser.add_argument("--inception_weights", default=None, help="Local Inception-v3 weights file (offline use).")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--output", default=None, help="JSON file (default: MODEL/eval.json or ./eval.json).")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.model, args.steps, args.num_samples, args.features, args.dataset, args.image_column,
                          args.train_data_dir, args.inception_weights, args.num_real, args.batch_size, args.seed,
                          args.device)
    except (ConfigError, RuntimeError) as error:
        sys.exit(f"error: {error}")
    print(f"{result['model']}: {result['num_samples']} samples vs {result['num_real']} real images "
          f"({result['dataset']}), {result['features']} features")
    if "feature_extractor_test_accuracy" in result:
        print(f"digits feature extractor held-out accuracy: {result['feature_extractor_test_accuracy']:.3f}")
    print(markdown_table(result))
    output = Path(args.output) if args.output else (
        Path(args.model) / "eval.json" if os.path.isdir(args.model) else Path("eval.json"))
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
