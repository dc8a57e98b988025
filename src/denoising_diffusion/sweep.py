"""Train variants of a config at the same budget and compare them: the recipe study and the grid of
the R/torch port of the Keras DDIM example (Falbel 2023) are two specs of this one tool.

    python -m denoising_diffusion.sweep configs/sweeps/loss_grid.yaml
    python -m denoising_diffusion.sweep configs/sweeps/recipe.yaml --variants default mse --seeds 42 43

A spec names a `base_config`, `overrides` for every run, and the runs: `grid` (every combination of
the listed values) or `variants` (named sets of overrides), each trained once per seed of `seeds`
(default: the config's) through the normal training path. Each run is then scored: `noise_loss` and
`image_loss` (MAE of the EMA model on the training data, fixed noise and times;
`validation_batches: 0` skips them) and, for every sampler of `solvers` and step count of
`inference_steps`, KID/FID of its samples from the same noise (and, with the digits features, the
fraction recognised with p >= 0.9). Several seeds are averaged, with the spread between them.

A finished run (its folder holds a saved pipeline trained with the same settings) is not trained
again, and its scores are reused (`sweep_scores.json` in its folder). Writes `results.json`,
`results.csv`, `results.md` and `samples.png` (a row of samples from the same noise per run).
"""

import argparse
import csv
import dataclasses
import itertools
import json
import statistics
from pathlib import Path

import torch
import yaml

from .evaluation.features import feature_extractor, resolve_features
from .evaluation.kid import extract_features
from .evaluation.scoring import generate, score_samples
from .hardware import machine_info
from .images import labelled_rows
from .pipelines.pipeline_cosine_ddim import CosineDDIMPipeline
from .schedulers.scheduling_cosine_ddim import CosineDDIMScheduler
from .schedulers.scheduling_cosine_dpmsolver import CosineDPMSolverScheduler
from .training import train
from .training.components import build_scheduler
from .training.arguments import parse_config
from .training.config import ConfigError, TrainingConfig
from .training.data import TrainingImages, prepare_dataset
from .training.objectives import DiffusionObjective

SOLVERS = {"ddim": CosineDDIMScheduler, "dpm": CosineDPMSolverScheduler}


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


def runs_of(spec: dict, only: list[str] | None = None) -> list[tuple[str, dict]]:
    """(name, settings) for every run of the spec: each `grid` combination, or each of `variants`."""
    if "grid" in spec:
        keys = list(spec["grid"])
        runs = [("-".join(str(v) for v in combo), dict(zip(keys, combo)))
                for combo in itertools.product(*(spec["grid"][k] for k in keys))]
    else:
        runs = [(name, dict(settings or {})) for name, settings in spec["variants"].items()]
    if only:
        unknown = sorted(set(only) - {name for name, _ in runs})
        if unknown:
            raise ConfigError(f"Unknown runs {unknown}; the spec has {[name for name, _ in runs]}.")
        runs = [(name, settings) for name, settings in runs if name in only]
    return runs


def matches(saved: dict, settings: dict) -> bool:
    """Whether a saved training config has every setting (for the UNet: every given key). A setting the
    saved config lacks (it was written before that option existed) counts as the option's default."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingConfig) if f.default is not dataclasses.MISSING}
    for key, value in settings.items():
        if key == "unet":
            if any(saved.get("unet", {}).get(k) != v for k, v in value.items()):
                return False
        elif saved.get(key, defaults.get(key)) != value:
            return False
    return True


@torch.no_grad()
def validation_losses(pipe: CosineDDIMPipeline, images: TrainingImages, config, batches: int,
                      batch_size: int = 64) -> dict[str, float]:
    """Mean MAE on the noise and on the image over `batches` batches of the training images (fixed
    noise and times); a class-conditional model is given the images' labels ("no class" for a stream,
    whose labels are not read ahead)."""
    generator = torch.Generator(device=pipe.device).manual_seed(1234)
    scheduler = build_scheduler(config)
    objective = DiffusionObjective.from_config(config)
    totals = {"noise_loss": 0.0, "image_loss": 0.0}
    pixels = images.pixels(batches * batch_size)
    chunks = pixels.split(batch_size)
    labels = [None] * len(chunks)
    if pipe.null_class_label is not None:
        known = images.label_column is not None and not images.streaming
        labels = (images.labels()[:len(pixels)] if known else torch.full((len(pixels),), pipe.null_class_label))
        labels = labels.long().to(pipe.device).split(batch_size)
    for batch, batch_labels in zip(chunks, labels):
        losses = objective(pipe.unet, scheduler, pipe.normalize(batch.to(pipe.device).float() / 255.0), generator,
                           batch_labels)
        for key in totals:
            totals[key] += losses[key].item()
    return {key: value / len(chunks) for key, value in totals.items()}


class Sweep:
    """One spec's runs, trained and scored; `run()` returns the rows of the results table."""

    def __init__(self, spec_path: str, output_dir: str | None = None, only: list[str] | None = None,
                 seeds: list[int] | None = None):
        spec_file = Path(spec_path)
        self.spec = yaml.safe_load(spec_file.read_text())
        self.base = _resolve(self.spec["base_config"], spec_file)
        self.out = Path(output_dir or self.spec["output_dir"])
        self.runs = runs_of(self.spec, only)
        self.seeds = seeds or self.spec.get("seeds")  # None: the config's seed, folders named by the run alone
        evaluation = self.spec.get("evaluation", {})
        steps = evaluation.get("inference_steps", 20)
        self.keys = [f"{solver}@{n}" for solver in evaluation.get("solvers", ["ddim"])
                     for n in (steps if isinstance(steps, list) else [steps])]
        self.num_samples = evaluation.get("num_samples", 1000)
        self.validation_batches = evaluation.get("validation_batches", 20)
        self.samples_per_row = evaluation.get("samples_per_row", 8)
        self.features_name = evaluation.get("features", "auto")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.extractor = self.real = None
        self.sample_rows = []

    def config_for(self, settings: dict, folder: Path):
        return parse_config(["--config", self.base, *_args(self.spec.get("overrides", {})), *_args(settings),
                             "--output_dir", str(folder)])

    def trained(self, settings: dict, folder: Path):
        """The run's config, trained unless its folder already holds it."""
        config = self.config_for(settings, folder)
        saved = folder / "training_config.yaml"
        if (folder / "model_index.json").exists() and saved.exists() and matches(yaml.safe_load(saved.read_text()),
                                                                                  settings):
            return config, True
        print(f"== training {folder.name}", flush=True)
        config.overwrite_output_dir = True
        train(config)
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        return config, False

    def score(self, config, folder: Path, reuse: bool, sample_row: bool = False) -> dict:
        """The run's validation losses and, per sampler and step count, its sample scores; with
        `sample_row`, a row of its samples (first sampler and step count) for `samples.png`."""
        pipe = CosineDDIMPipeline.from_pretrained(folder).to(self.device)
        pipe.set_progress_bar_config(disable=True)
        images = prepare_dataset(config)
        if self.extractor is None:  # the real images' features, once for every run
            name = resolve_features(self.features_name, config.dataset_name, config.train_data_dir)
            self.features_name, self.extractor = name, feature_extractor(name).to(self.device)
            self.real = extract_features(images.pixels(images.num_examples).float() / 255.0, self.extractor)
        cache = folder / "sweep_scores.json"
        cached = json.loads(cache.read_text()) if reuse and cache.exists() else {}
        if cached.get("num_samples") != self.num_samples:
            cached = {"num_samples": self.num_samples}
        scores = {}
        for key in self.keys:
            solver, steps = key.split("@")
            if key not in cached:
                fake, _ = generate(pipe, self.num_samples, int(steps), seed=0,
                                   scheduler=SOLVERS[solver].from_config(pipe.scheduler.config))
                cached[key] = score_samples(fake, self.real, self.extractor)
                cache.write_text(json.dumps(cached, indent=2) + "\n")
            scores[key] = cached[key]
        if sample_row:
            solver, steps = self.keys[0].split("@")
            row, _ = generate(pipe, self.samples_per_row, int(steps), seed=0,
                              scheduler=SOLVERS[solver].from_config(pipe.scheduler.config))
            self.sample_rows.append((f"{folder.name}  KID {scores[self.keys[0]]['kid']:.4f}", row))
        losses = validation_losses(pipe, images, config, self.validation_batches) if self.validation_batches else {}
        summary = json.loads((folder / "training_summary.json").read_text())
        return {"losses": losses, "scores": scores, "training_seconds": summary.get("training_seconds"),
                "num_parameters": summary.get("num_parameters")}

    def row(self, name: str, settings: dict, per_seed: list[dict]) -> dict:
        """The results-table row of one run: its settings, then the means over seeds."""
        row = {**settings} if "grid" in self.spec else {"variant": name}
        for loss in per_seed[0]["losses"]:
            row[loss] = round(statistics.mean(run["losses"][loss] for run in per_seed), 6)
        for key in self.keys:
            prefix = "" if len(self.keys) == 1 else f"{key} "
            kids = [run["scores"][key]["kid"] for run in per_seed]
            for metric, value in per_seed[0]["scores"][key].items():
                if isinstance(value, (int, float)):  # per-class lists (class_balance) stay in results.json
                    row[prefix + metric] = round(statistics.mean(run["scores"][key][metric] for run in per_seed), 6)
            if len(per_seed) > 1:
                row[prefix + "kid_seed_spread"] = round(max(kids) - min(kids), 6)
        row["train_minutes"] = round(statistics.mean(run["training_seconds"] or 0 for run in per_seed) / 60, 2)
        return row

    def run(self) -> list[dict]:
        results, details = [], []
        for name, settings in self.runs:
            per_seed = []
            for seed in self.seeds or [None]:
                run_settings = settings if seed is None else {**settings, "seed": seed}
                folder = self.out / (name if seed is None else f"{name}-seed{seed}")
                config, reuse = self.trained(run_settings, folder)
                per_seed.append({"seed": config.seed, **self.score(config, folder, reuse, sample_row=not per_seed)})
            results.append(self.row(name, settings, per_seed))
            details.append({"run": name, "settings": settings, "per_seed": per_seed})
            print(json.dumps(results[-1]), flush=True)
        self.write(results, details)
        return results

    def write(self, results: list[dict], details: list[dict]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(results[0]))
            writer.writeheader()
            writer.writerows(results)
        header = list(results[0])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in results]
        kid = "kid" if len(self.keys) == 1 else f"{self.keys[0]} kid"
        best = min(results, key=lambda r: r[kid])
        name_keys = [k for k in header if k in (self.spec.get("grid") or {"variant": 0})]
        lines += ["", f"Lowest KID ({self.keys[0]}): {', '.join(f'{k}={best[k]}' for k in name_keys)} ({best[kid]:.4f}); "
                  f"KID with {self.features_name} features, {self.num_samples} samples, seeds {self.seeds or 'as configured'}."]
        (self.out / "results.md").write_text("\n".join(lines) + "\n")
        result = {"spec": self.spec, "seeds": self.seeds, "num_samples": self.num_samples, "features": self.features_name,
                  "machine": machine_info(), "results": results, "runs": details}
        if self.features_name == "digits":
            result["real_held_out_recognised"] = self.extractor.held_out_recognised_fraction()
        (self.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        labelled_rows(self.sample_rows).save(self.out / "samples.png")
        print("\n".join(lines))


def run_sweep(spec_path: str, output_dir: str | None = None, only: list[str] | None = None,
              seeds: list[int] | None = None) -> list[dict]:
    """Train and score every run of the spec (or those named in `only`); return the table's rows."""
    return Sweep(spec_path, output_dir, only, seeds).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m denoising_diffusion.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="Sweep spec YAML (e.g. configs/sweeps/loss_grid.yaml).")
    parser.add_argument("--output_dir", default=None, help="Overrides the spec's output_dir.")
    parser.add_argument("--variants", nargs="+", default=None, help="Only these runs (names of the spec's runs).")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Overrides the spec's seeds.")
    args = parser.parse_args(argv)
    try:
        run_sweep(args.spec, args.output_dir, args.variants, args.seeds)
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main()
