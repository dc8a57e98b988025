"""Training recipe study: what moves few-step quality at a fixed budget.

    python benchmarks/recipe.py --variants seed mse v_mse v_mse_snr5 [--seeds 42] [--steps 5 10 20]

Each variant is the default digits config (`--config`) with a few keys overridden (`VARIANTS`),
trained through the normal training path with the same budget (the config's epochs and batch) and
each seed, then sampled from the same noise with DPM-Solver++(2M) and DDIM at each step count. Reports
KID on digits features (mean over seeds, and the spread between seeds) and the fraction of samples
recognised with p >= 0.9. Prints a markdown table and writes benchmarks/results/recipe-<machine>.json.
A finished run is reused when its folder already holds a saved pipeline of the same config, and so
are its scores (`recipe_scores.json` in the run's folder).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import ROOT, machine_info, machine_tag  # noqa: E402

# Overrides of the default config. "seed" = the seeds' recipe (MAE on the predicted noise, cosine schedule).
VARIANTS = {
    "seed": {"loss": "mae", "loss_on": "noise", "prediction_type": "epsilon"},
    "mse": {"loss": "mse", "loss_on": "noise", "prediction_type": "epsilon"},
    "v_mse": {"loss": "mse", "loss_on": "velocity", "prediction_type": "v_prediction"},
    "v_mae": {"loss": "mae", "loss_on": "velocity", "prediction_type": "v_prediction"},
    "v_mse_snr5": {"loss": "mse", "loss_on": "velocity", "prediction_type": "v_prediction", "snr_gamma": 5.0},
    "mse_snr5": {"loss": "mse", "loss_on": "noise", "prediction_type": "epsilon", "snr_gamma": 5.0},
    "snr5": {"snr_gamma": 5.0},  # the default (MAE on the noise) with Min-SNR-5 weighting
    # EMA. At 1,160 steps EMAModel's warm-up (1 + s) / (10 + s) stays below any ema_decay >= 0.992, so
    # 0.998, 0.999 and 0.9995 train bit-identical weights; ema_min_decay holds the decay constant instead.
    "ema_const_999": {"ema_decay": 0.999, "ema_min_decay": 0.999},  # the seeds' Keras EMA
    "ema_const_995": {"ema_decay": 0.995, "ema_min_decay": 0.995},
    # Architecture (default: widths 32/64/96, two residual blocks per level, no attention; 2.0M parameters).
    "attn": {"unet": {"down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
                      "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}},  # at 4x4; 2.2M
    "narrow": {"unet": {"block_out_channels": [24, 48, 72]}},  # 1.1M
    "wide": {"unet": {"block_out_channels": [48, 96, 144]}},  # 4.5M
    "deep": {"unet": {"layers_per_block": 3}},  # 2.8M
}


def matches(saved: dict, overrides: dict) -> bool:
    """Whether a saved training config has every override (for the UNet: every given key)."""
    for key, value in overrides.items():
        if key == "unet":
            if any(saved.get("unet", {}).get(k) != v for k, v in value.items()):
                return False
        elif saved.get(key) != value:
            return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/digits.yaml"))
    parser.add_argument("--variants", nargs="+", default=["seed", "mse", "v_mse"], choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "recipe"))
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler, CosineDPMSolverScheduler
    from denoising_diffusion.evaluate import data_config, real_images, score_samples
    from denoising_diffusion.evaluation.features import feature_extractor
    from denoising_diffusion.evaluation.kid import extract_features, generate
    from denoising_diffusion.training import parse_config, train

    extractor = feature_extractor("digits")
    real = None
    rows = []
    for variant in args.variants:
        per_seed = []
        for seed in args.seeds:
            overrides = {**VARIANTS[variant], "seed": seed}
            argv = ["--config", args.config, "--logger", "none", "--output_dir",
                    str(Path(args.output_dir) / f"{variant}-seed{seed}")]
            for key, value in overrides.items():
                argv += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
            config = parse_config(argv)
            folder = Path(config.output_dir)
            saved = folder / "training_config.yaml"
            reuse = (folder / "model_index.json").exists() and saved.exists() and \
                matches(yaml.safe_load(saved.read_text()), overrides)
            if not reuse:
                config.overwrite_output_dir = True
                config.checkpointing_steps = config.save_images_steps = 10**9
                print(f"training {variant}, seed {seed} ...", flush=True)
                train(config)
            summary = json.loads((folder / "training_summary.json").read_text())
            pipe = CosineDDIMPipeline.from_pretrained(folder)
            pipe.set_progress_bar_config(disable=True)
            if real is None:
                real = extract_features(real_images(data_config(folder, pipe, None, None, None), 10000), extractor)
            cache = folder / "recipe_scores.json"  # scores of this run, reused when asked again
            cached = json.loads(cache.read_text()) if reuse and cache.exists() else {}
            if cached.get("num_samples") != args.num_samples:
                cached = {"num_samples": args.num_samples}
            scores = {}
            for solver, cls in (("dpm", CosineDPMSolverScheduler), ("ddim", CosineDDIMScheduler)):
                for steps in args.steps:
                    key = f"{solver}@{steps}"
                    if key not in cached:
                        fake, _ = generate(pipe, args.num_samples, steps, seed=0,
                                           scheduler=cls.from_config(pipe.scheduler.config))
                        cached[key] = score_samples(fake, real, extractor)
                        cache.write_text(json.dumps(cached, indent=2) + "\n")
                    scores[key] = cached[key]
            per_seed.append({"seed": seed, "training_seconds": summary.get("training_seconds"),
                             "num_parameters": summary.get("num_parameters"), "scores": scores})
            print(json.dumps({"variant": variant, "seed": seed,
                              **{k: round(v["kid"], 2) for k, v in scores.items()}}), flush=True)
        keys = per_seed[0]["scores"].keys()
        row = {"variant": variant, "overrides": VARIANTS[variant], "runs": per_seed, "mean": {}}
        for key in keys:
            kids = [run["scores"][key]["kid"] for run in per_seed]
            row["mean"][key] = {"kid": statistics.mean(kids),
                                "kid_std": statistics.mean(run["scores"][key]["kid_std"] for run in per_seed),
                                "kid_seed_spread": max(kids) - min(kids) if len(kids) > 1 else None,
                                "recognised": statistics.mean(run["scores"][key]["recognised"] for run in per_seed)}
        rows.append(row)
    keys = list(rows[0]["mean"])
    lines = ["| variant | params | train min | " + " | ".join(keys) + " |", "| --- | --- | --- |" + " :--- |" * len(keys)]
    for row in rows:
        cells = []
        for key in keys:
            m = row["mean"][key]
            spread = f" ({m['kid_seed_spread']:.1f} apart)" if m["kid_seed_spread"] is not None else ""
            cells.append(f"{m['kid']:.2f} ± {m['kid_std']:.2f}{spread}; {m['recognised']:.0%}")
        params = row["runs"][0]["num_parameters"]
        minutes = statistics.mean(run["training_seconds"] or 0 for run in row["runs"]) / 60
        lines.append(f"| {row['variant']} | {params / 1e6:.1f}M | {minutes:.1f} | " + " | ".join(cells) + " |")
    lines.append(f"\nCells: KID (digits features) ± subset std; recognised with p >= 0.9 (real held-out digits: "
                 f"{extractor.held_out_recognised_fraction():.1%}). Seeds {args.seeds}, {args.num_samples} samples.")
    print("\n".join(lines))
    out = Path(args.output) if args.output else Path(__file__).resolve().parent / "results" / f"recipe-{machine_tag()}.json"
    out.write_text(json.dumps({"config": args.config, "seeds": args.seeds, "num_samples": args.num_samples,
                               "machine": machine_info(), "results": rows}, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
