"""How long an EMA the weights should average, from one training run per seed.

    python benchmarks/ema_lengths.py --num_epochs 9 --mixed_precision no     # emoji32, seeds 42 43 44
    python benchmarks/ema_lengths.py --config configs/digits.yaml --spec benchmarks/studies/digits.yaml

The EMA does not change what the network learns, so one run can carry several: besides the trainer's own
(`EMAModel`'s default warm-up, decay (1 + s) / (10 + s) up to `ema_decay`), every `--gammas` value adds a
power-function EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models"):
at step s it keeps 1 - (gamma + 1) / (gamma + 1 + s) of the average, i.e. diffusers' `EMAModel` with
`use_ema_warmup=True, inv_gamma=gamma + 1, power=1`. Its width relative to the run is
sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))): gamma 17 -> 0.05, the trainer's default
(gamma 8) -> 0.09, 3 -> 0.16, 1 -> 0.24. Each EMA takes its own autoguidance snapshot at the trainer's guide
step and is saved as a pipeline beside the trained one (`<name>-seed<seed>`), with the same sampling defaults.

Every pipeline is then scored as `quality.py` scores the study's saved pipelines (`--samplers`, default
`stored stored_class`: `pipe()` and `pipe(class_labels=...)` with their stored defaults, 10 network
evaluations per image, on the report noise). Writes benchmarks/results/ema_lengths-<config>-<machine>.json
and prints a table: mean over seeds, and each seed's value. `--reuse` scores the pipelines an earlier call
saved (for other `--samplers`) without training again.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine_info, machine_tag  # noqa: E402
from quality import Scorer, Study  # noqa: E402

DEFAULT = "trainer"


def sigma_rel(gamma: float) -> float:
    """The power-function EMA's standard deviation as a fraction of the run's length (Karras et al. 2024, eq. 3)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def ema_name(gamma: float) -> str:
    return f"gamma{gamma:g}"


def make_callback(gammas: list[float], folders: dict):
    """A callback that carries a power-function EMA per gamma and saves each as a pipeline in `folders[name]`."""
    import dataclasses

    from denoising_diffusion.training import Callback
    from denoising_diffusion.training.components import build_ema

    class PowerEMAs(Callback):
        """Extra EMAs of the trained weights; each saved as its own pipeline when the run saves its own."""

        def __init__(self):
            self.emas, self.guides = {}, {}

        def on_train_begin(self, trainer, step):
            if step != 0:
                raise ValueError("ema_lengths.py trains from scratch; remove the output folder's checkpoints.")
            unet = trainer.accelerator.unwrap_model(trainer.unet)
            self.emas = {  # what the trainer keeps with --ema_power 1 --ema_inv_gamma <gamma + 1>, uncapped
                ema_name(g): build_ema(dataclasses.replace(trainer.config, ema_decay=0.99999, ema_min_decay=0.0,
                                                           ema_power=1.0, ema_inv_gamma=g + 1), unet)
                for g in gammas}
            for ema in self.emas.values():
                ema.to(trainer.accelerator.device)

        def on_step_end(self, trainer, step):
            unet = trainer.accelerator.unwrap_model(trainer.unet)
            for name, ema in self.emas.items():
                ema.step(unet.parameters())
                if trainer.guide is not None and step == trainer.guide.step:
                    self.guides[name] = [p.detach().clone() for p in ema.shadow_params]

        def on_save(self, trainer, pipe):
            for name, ema in self.emas.items():
                other = trainer.pipeline()  # the run's pipeline: its guide, scheduler and sampling defaults
                ema.copy_to(other.unet.parameters())
                if other.guide_unet is not None:
                    for param, value in zip(other.guide_unet.parameters(), self.guides[name]):
                        param.data.copy_(value)
                other.save_pretrained(folders[name])

    return PowerEMAs()


def reusable(folders: dict, config) -> bool:
    """Whether an earlier call saved every pipeline of this seed, trained as `config` says."""
    import yaml

    saved = folders[DEFAULT] / "training_config.yaml"
    if not saved.exists() or not (folders[DEFAULT] / "training_summary.json").exists():
        return False
    if not all((folder / "model_index.json").exists() for folder in folders.values()):
        return False
    trained = yaml.safe_load(saved.read_text())
    keys = ("seed", "num_epochs", "max_train_steps", "dataset_name", "resolution", "train_batch_size", "unet")
    return all(trained.get(key) == getattr(config, key) for key in keys)


def train_seed(args, seed: int):
    from accelerate.state import AcceleratorState, GradientState

    from denoising_diffusion.training import parse_config, train

    out = Path(args.output_dir)
    folders = {name: out / f"{name}-seed{seed}" for name in (DEFAULT, *map(ema_name, args.gammas))}
    folder = folders[DEFAULT]  # the trainer's own run
    config = parse_config(["--config", args.config,
                           *(["--num_epochs", str(args.num_epochs)] if args.num_epochs else []),
                           *(["--mixed_precision", args.mixed_precision] if args.mixed_precision else []),
                           "--logger", "none",
                           "--checkpointing_steps", "100000", "--save_images_steps", "100000",
                           "--seed", str(seed), "--output_dir", str(folder), "--overwrite_output_dir", "true",
                           *(["--max_train_steps", str(args.max_train_steps)] if args.max_train_steps else [])])
    if args.reuse and reusable(folders, config):
        return config, folders, json.loads((folder / "training_summary.json").read_text())
    train(config, callbacks=[make_callback(args.gammas, folders)])
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    summary = json.loads((folder / "training_summary.json").read_text())
    return config, folders, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/emoji32.yaml"))
    parser.add_argument("--spec", default=str(ROOT / "benchmarks/studies/emoji32.yaml"),
                        help="The study whose evaluation (features, samplers, samples, budget) scores the pipelines.")
    parser.add_argument("--num_epochs", type=int, default=None,
                        help="Epochs per run (default: the config's; 9 fits emoji32 in 15 minutes of fp32 training "
                             "on a 2-core AVX2 CPU).")
    parser.add_argument("--mixed_precision", default=None, help="Overrides the config's (e.g. 'no' for fp32).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--gammas", type=float, nargs="+", default=[17.0, 3.0, 1.0])
    parser.add_argument("--samplers", nargs="+", default=["stored", "stored_class"])
    parser.add_argument("--output_dir", default="outputs/ema_lengths")
    parser.add_argument("--max_train_steps", type=int, default=None, help="Stop each run early (a quick check).")
    parser.add_argument("--reuse", action="store_true",
                        help="Score the pipelines an earlier call saved in --output_dir instead of training again "
                             "(a seed is trained when any of its folders is missing).")
    parser.add_argument("--num_samples", type=int, default=None, help="Samples per score (default: the spec's).")
    args = parser.parse_args()
    bad = [g for g in args.gammas if g <= 0]
    if bad:
        raise SystemExit(f"--gammas {bad}: expected positive exponents (power-function EMA).")

    study = Study(args.spec, variants=None, seeds=args.seeds, samplers=args.samplers)
    if args.num_samples:
        study.evaluation["num_samples"] = args.num_samples
    per_name = {}  # name -> [(seed, folder, summary)]
    config = None
    for seed in args.seeds:
        config, folders, summary = train_seed(args, seed)
        for name, folder in folders.items():
            per_name.setdefault(name, []).append((seed, folder, summary))
    study.scorer = Scorer(study.evaluation, config, study.device)
    results = {}
    for name, models in per_name.items():
        results[name] = study.score_variant(name, models)
        gamma = 8.0 if name == DEFAULT else float(name.removeprefix("gamma"))
        results[name]["sigma_rel"] = sigma_rel(gamma)
    out = {"config": Path(args.config).name, "num_epochs": config.num_epochs, "mixed_precision": config.mixed_precision,
           "seeds": args.seeds, "samplers": args.samplers, "real": study.scorer.reference(),
           "machine": machine_info(), "emas": results}
    path = RESULTS / f"ema_lengths-{Path(args.config).stem}-{machine_tag()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")

    print(f"\n{len(args.seeds)} seeds {args.seeds}; {config.num_epochs} epochs of {Path(args.config).name}, "
          f"mixed_precision {config.mixed_precision}")
    print("| EMA | sigma_rel | sampler | KID (per seed) | requested category (per seed) | nn_ratio |")
    print("| --- | ---: | --- | :--- | :--- | ---: |")
    for name, result in results.items():
        for sampler, scores in result["samplers"].items():
            mean, runs = scores["mean"], scores["per_seed"]
            kids = ", ".join(f"{r['kid']:.2f}" for r in runs)
            kid = f"{mean['kid']:.2f} ± {mean['kid_std']:.2f} ({kids})"
            req = ""
            if "requested_recognised" in mean:
                shares = ", ".join(f"{r['requested_recognised']:.1%}" for r in runs)
                req = f"{mean['requested_recognised']:.1%} ({shares})"
            print(f"| {name} | {result['sigma_rel']:.3f} | {sampler} | {kid} | {req} | {mean['nn_ratio']:.2f} |")
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
