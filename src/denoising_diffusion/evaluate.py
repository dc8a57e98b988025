"""Evaluate a saved pipeline: KID (and FID) against real images at several step counts.

    python -m denoising_diffusion.evaluate --model outputs/digits --num_samples 1000 --steps 10 20 50

The real images come from the dataset the model was trained on (its `training_config.yaml`, or
`--dataset`), preprocessed the same way. Prints a markdown table and writes JSON.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .evaluation.features import feature_extractor, resolve_features
from .evaluation.kid import extract_features, kid_fid
from .evaluation.report import markdown_table
from .evaluation.scoring import generate, model_folder, score_samples
from .hardware import machine_info
from .pipelines.pipeline_cosine_ddim import CosineDDIMPipeline
from .training.config import ConfigError
from .training.data import data_config, real_images


def evaluate(model: str, steps: list[int], num_samples: int = 1000, features="auto",
             dataset: str | None = None, image_column: str | None = None, train_data_dir: str | None = None,
             inception_weights: str | None = None, num_real: int = 10000, batch_size: int = 256, seed: int = 0,
             device: str | None = None) -> dict:
    """KID/FID of `model`'s samples at each step count (with the pipeline's own sampling defaults, e.g. its
    autoguidance; each row says what a sample cost in network evaluations); returns a JSON-ready dict.

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
        rows.append({"steps": n, "network_evaluations": pipe.network_evaluations(n), **scores, "seconds": seconds,
                     "images_per_second": num_samples / seconds})
    result = {
        "model": str(model), "dataset": config.train_data_dir or config.dataset_name, "num_real": len(real),
        "num_samples": num_samples, "features": features, "seed": seed, "device": str(device),
        "real_vs_real": {"kid": floor["kid"], "kid_std": floor["kid_std"], "fid": floor["fid"]},
        "machine": machine_info(),
        "results": rows,
    }
    if features == "digits":
        result["feature_extractor_test_accuracy"] = extractor.test_accuracy
        # real digits the classifier never saw, at the model's resolution (upscaled as the training data is)
        result["real_vs_real"]["recognised"] = extractor.held_out_recognised_fraction(size=real.shape[-1])
    return result


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
