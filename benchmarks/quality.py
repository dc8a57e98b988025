"""The sample-quality study: recipes trained on the same images, seeds paired, samplers compared at
the same number of network evaluations, guidance tuned on one set of noise and reported on another.

    python benchmarks/quality.py benchmarks/studies/digits.yaml              # about 1 h on a 2-core CPU
    python benchmarks/quality.py benchmarks/studies/emoji32.yaml             # needs data/emoji (data/emoji.py)
    python benchmarks/quality.py benchmarks/studies/digits.yaml --variants default --seeds 42
    python benchmarks/quality.py benchmarks/studies/emoji32.yaml --variants batch32 --samplers tuned_class_cfg

A study spec is a sweep spec (`python -m denoising_diffusion.sweep`: `base_config`, `overrides`,
`variants`, `seeds`; finished runs are reused) plus `evaluation`:

* `features`: `digits` (the digits classifier: KID, the fraction recognised with p >= 0.9, each digit's
  share of the recognised ones over its real share) or `emoji` (the category classifier of
  `emoji_classifier.py`: KID, and for class-conditional samplers the requested category recognised).
* `budget`: network evaluations per image; a sampler without `steps` takes as many steps as fit.
* `samplers`: named settings of the pipeline call (`scheduler`: ddim or dpm_solver, `steps`,
  `autoguidance_scale`, `guidance_interval`, `guidance_scale`, `conditional`, `timestep_spacing`: the saved
  scheduler's unless given). `stored: true` calls the
  saved pipeline as a user does, with its own scheduler and `sampling_defaults` (`conditional: true`:
  `pipe(class_labels=...)`; without it: `pipe()`), whatever the budget.
* `tune`: one block or a list of them. For each variant, every combination of a block's listed
  `autoguidance_scale`, `guidance_interval`, `guidance_scale` and `timestep_spacing` values (its other keys, such as
  `scheduler` and `conditional`, are kept as given) is scored on the tuning noise (seed 1) of all the
  variant's models; the one `select` prefers (`kid`: the lowest mean KID; `recognised`: the highest
  mean recognised fraction whose KID is no higher than the `reference` sampler's or the real images'
  own floor, whichever is higher, and whose classes all stay within 0.5x-1.5x of their real share;
  `requested`: the same with the requested class recognised; with `min_nn_ratio`, also no lower
  `nn_ratio`, below) is then scored as sampler `name` (default `tuned`) on the report noise (seed 0),
  as every sampler is.
* `conditional: true` asks for every class equally often; `conditional: prior` draws each sample's
  class from the training data's class frequencies (as a stored `class_prior: dataset` does); without
  it a sampler calls the pipeline without class labels, as `pipe()` does: unconditional samples, or
  labels drawn from a stored `class_prior`.

Every score also gives the mean distance to the nearest training image over the training images' own
leave-one-out mean (`nn_ratio`; below 1: closer to the training data than real unseen images are).
Writes benchmarks/results/quality-<spec name>-<machine>.json and prints a table per sampler (mean over
seeds, KID spread between seeds). A later run of some variants, seeds or samplers merges into that file
by seed: its rows replace those of the same seed, the other seeds' rows are kept and the means taken again.
"""

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, machine_tag  # noqa: E402

REPORT_NOISE, TUNING_NOISE = 0, 1
SCHEDULERS = ("ddim", "dpm_solver")


def fitting_steps(pipe, sampler: dict, budget: int, saved_scheduler) -> int:
    """The most steps whose network evaluations per image stay within `budget`."""
    best = 0
    for steps in range(1, budget + 1):
        if evaluations(pipe, sampler, steps, saved_scheduler) <= budget:
            best = steps
    if best == 0:
        raise ValueError(f"No step count of {sampler} fits {budget} network evaluations.")
    return best


def interval(sampler: dict) -> tuple:
    """The sampler's guidance interval; every step when it names none (never the pipeline's stored default)."""
    from denoising_diffusion.pipelines.guidance import NO_INTERVAL

    return tuple(sampler.get("guidance_interval") or NO_INTERVAL)


def evaluations(pipe, sampler: dict, steps: int | None, saved_scheduler) -> int:
    """Network evaluations per image of `sampler` on `pipe`, whose `saved_scheduler` is the one it was saved with."""
    if sampler.get("stored"):  # the pipeline's own defaults, as pipe() or pipe(class_labels=...) uses them
        return pipe.network_evaluations(steps, class_labels=True if sampler.get("conditional") else None)
    return pipe.network_evaluations(steps, sampler.get("guidance_scale", 1.0), sampler.get("autoguidance_scale", 1.0),
                                    interval(sampler), class_labels=True if sampler.get("conditional") else None,
                                    timestep_spacing=sampler_spacing(sampler, saved_scheduler))


def sampler_spacing(sampler: dict, saved_scheduler) -> str:
    """The step spacing a sampler uses: its own `timestep_spacing`, else the saved scheduler's."""
    return sampler.get("timestep_spacing", saved_scheduler.config.timestep_spacing)


def check_stored(sampler: dict) -> None:
    """A `stored` sampler names nothing the pipeline's defaults would decide, and asks for classes or not."""
    named = sorted(k for k in ("scheduler", "autoguidance_scale", "guidance_interval", "guidance_scale",
                               "timestep_spacing") if k in sampler)
    if named or sampler.get("conditional") not in (None, False, True):
        raise ValueError(f"A stored sampler uses the saved pipeline's scheduler and sampling defaults: it takes "
                         f"`conditional: true` (pipe(class_labels=...)) or nothing (pipe()), and `steps`; got {sampler}.")


class Scorer:
    """Real-image features, the classifier and the training images of one study, prepared once."""

    def __init__(self, evaluation: dict, config, device):
        from denoising_diffusion.evaluation.kid import extract_features
        from denoising_diffusion.evaluation.memorisation import nearest_neighbour_distances
        from denoising_diffusion.training.data import real_images

        self.kind, self.device = evaluation["features"], device
        self.num_samples = evaluation.get("num_samples", 1000)
        self.train = real_images(config, 100_000)
        if self.kind == "digits":
            from denoising_diffusion.evaluation.features import DigitsFeatures

            self.extractor = DigitsFeatures().to(device)
            self.real_recognised = self.extractor.recognised_fraction(self.train)
            self.num_classes = 10
            from sklearn.datasets import load_digits

            labels = torch.as_tensor(load_digits().target)
        else:
            from emoji_classifier import CategoryFeatures, load_emoji, train_classifier

            images, labels, self.class_names = load_emoji(config.dataset_name, config.resolution)
            with torch.enable_grad():
                classifier, self.accuracy, self.balanced_accuracy = train_classifier(images, labels, config.resolution)
            self.extractor = CategoryFeatures(classifier).eval().to(device)
            self.num_classes = len(self.class_names)
        # how often each class occurs in the training data: what `conditional: prior` draws from
        self.class_frequencies = torch.bincount(labels.long(), minlength=self.num_classes).double() / len(labels)
        self.real_features = extract_features(self.train, self.extractor)
        self.nn_reference = float(nearest_neighbour_distances(self.train, self.train, leave_one_out=True).mean())
        # The noise floor: KID between two random halves of the real images (what a perfect model scores).
        from denoising_diffusion.evaluation.kid import kid_fid

        order = torch.randperm(len(self.real_features), generator=torch.Generator().manual_seed(0))
        halves = self.real_features[order[: len(order) // 2]], self.real_features[order[len(order) // 2:]]
        self.floor = kid_fid(*halves, subset_size=min(self.num_samples, len(order) // 2))

    def sample(self, pipe, sampler: dict, steps: int | None, noise_seed: int,
               saved_scheduler) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`num_samples` images in [0, 1] and, for a conditional sampler, the classes asked for. A `stored`
        sampler calls the pipeline with its `saved_scheduler` and no guidance arguments (steps None: its own)."""
        from denoising_diffusion.evaluation.scoring import generate

        if sampler.get("stored"):
            check_stored(sampler)
            pipe.scheduler = saved_scheduler
            labels = self.requested_labels() if sampler.get("conditional") else None
            images, _ = generate(pipe, self.num_samples, steps, seed=noise_seed, class_labels=labels)
            return images, labels
        scheduler = sampler.get("scheduler", "ddim")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {scheduler!r} is not one of {SCHEDULERS}.")
        from denoising_diffusion import CosineDDIMScheduler, CosineDPMSolverScheduler

        spacing = sampler_spacing(sampler, saved_scheduler)  # never the spacing a previous sampler set
        pipe.scheduler = (CosineDPMSolverScheduler if scheduler == "dpm_solver" else CosineDDIMScheduler).from_config(
            saved_scheduler.config, timestep_spacing=spacing)
        labels = None
        if sampler.get("conditional") == "prior":  # as a stored class_prior draws them, from its own noise seed
            labels = torch.multinomial(self.class_frequencies, self.num_samples, replacement=True,
                                       generator=torch.Generator().manual_seed(1000 + noise_seed))
        elif sampler.get("conditional"):
            labels = self.requested_labels()
        kwargs = {"autoguidance_scale": sampler.get("autoguidance_scale", 1.0),
                  "guidance_interval": interval(sampler),
                  "guidance_scale": sampler.get("guidance_scale", 1.0),
                  "timestep_spacing": spacing}  # not a saved per-call one (`with_class_labels`)
        images, _ = generate(pipe, self.num_samples, steps, seed=noise_seed, class_labels=labels, **kwargs)
        return images, labels

    def requested_labels(self) -> torch.Tensor:
        """Every class asked for equally often: 0, 1, ..., N-1, 0, 1, ... (`num_samples` of them)."""
        return torch.arange(self.num_classes).repeat(self.num_samples // self.num_classes + 1)[:self.num_samples]

    def score(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict:
        from denoising_diffusion.evaluation.scoring import score_samples

        scores = score_samples(images, self.real_features, self.extractor, train_pixels=self.train,
                               nn_reference=self.nn_reference)
        if labels is not None:  # the category asked for, recognised: mean over categories (balanced)
            classifier = self.extractor.classifier
            with torch.no_grad():
                predicted = torch.cat([classifier(c.to(self.device)).argmax(1).cpu() for c in images.split(512)])
            per_class = [(predicted[labels == c] == c).float().mean().item() for c in range(self.num_classes)]
            scores["requested_recognised"] = sum(per_class) / len(per_class)
            scores["requested_recognised_per_class"] = per_class
        return scores

    def reference(self) -> dict:
        """What real images score: the digits' recognised fraction, the category classifier's accuracy."""
        floor = {"real_vs_real_kid": self.floor["kid"], "real_vs_real_kid_std": self.floor["kid_std"],
                 "nn_reference": self.nn_reference}
        if self.kind == "digits":
            return {**floor, "training_digits_recognised": self.real_recognised,
                    "held_out_digits_recognised": self.extractor.held_out_recognised_fraction(size=self.train.shape[-1]),
                    "held_out_digits_recognised_8x8": self.extractor.held_out_recognised_fraction(),
                    "digits_classifier_test_accuracy": self.extractor.test_accuracy}
        return {**floor, "category_classifier_accuracy": self.accuracy,
                "category_classifier_balanced_accuracy": self.balanced_accuracy}


def mean_scores(runs: list[dict]) -> dict:
    """Means over seeds of every number (lists element-wise), and the spread of the seeds' KIDs."""
    out = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            out[key] = statistics.mean(r[key] for r in runs)
        elif isinstance(value, list):
            out[key] = [statistics.mean(r[key][i] for r in runs) for i in range(len(value))]
    kids = [r["kid"] for r in runs]
    out["kid_seed_spread"] = max(kids) - min(kids)
    out["kid_seed_std"] = statistics.stdev(kids) if len(kids) > 1 else 0.0
    return out


def merge_by_seed(before: list[dict], now: list[dict]) -> list[dict]:
    """Rows of both lists, one per seed, `now`'s replacing `before`'s of the same seed, sorted by seed."""
    rows = {row["seed"]: row for row in before}
    rows.update({row["seed"]: row for row in now})
    return [rows[seed] for seed in sorted(rows)]


def merge_variant(before: dict, now: dict) -> dict:
    """One variant's results after a run of some of its seeds and samplers on top of an earlier run.

    A sampler run now keeps the earlier rows of the seeds not run now when its settings are unchanged (its
    mean is taken again over all of them); with other settings (a tune block that chose differently) only
    the new rows stand. Samplers and tune blocks not run now are kept as they were.
    """
    samplers = dict(before.get("samplers", {}))
    for name, result in now["samplers"].items():
        earlier = samplers.get(name)
        if earlier is not None and earlier["settings"] == result["settings"]:
            runs = merge_by_seed(earlier["per_seed"], result["per_seed"])
            result = {**result, "per_seed": runs, "mean": mean_scores(runs)}
        samplers[name] = result
    blocks_run = {row["block"] for row in now.get("tuning", [])}
    tuning = [row for row in before.get("tuning", []) if row.get("block", "tuned") not in blocks_run]
    merged = {**now, "training": merge_by_seed(before.get("training", []), now["training"]), "samplers": samplers}
    if tuning or now.get("tuning"):
        merged["tuning"] = tuning + now.get("tuning", [])
    return merged


TUNED_KEYS = ("autoguidance_scale", "guidance_interval", "guidance_scale", "timestep_spacing")
BLOCK_KEYS = ("name", "select", "reference", "min_nn_ratio")
SELECT_METRICS = {"kid": "kid", "recognised": "recognised", "requested": "requested_recognised"}


def tuning_blocks(tune: dict | list | None) -> list[dict]:
    """The spec's `tune` as a list of blocks, each with its `name` (a single block is named `tuned`)."""
    blocks = [] if tune is None else [tune] if isinstance(tune, dict) else list(tune)
    out = []
    for block in blocks:
        block = {"name": "tuned", "select": "kid", **block}
        if block["select"] not in SELECT_METRICS:
            raise ValueError(f"tune select must be one of {list(SELECT_METRICS)}, got {block['select']!r}.")
        out.append(block)
    names = [b["name"] for b in out]
    if len(set(names)) != len(names):
        raise ValueError(f"tune blocks need distinct names, got {names}.")
    return out


def tuning_grid(tune: dict) -> list[dict]:
    keys = [k for k in TUNED_KEYS if k in tune]
    base = {k: v for k, v in tune.items() if k not in keys + list(BLOCK_KEYS)}
    return [{**base, **dict(zip(keys, values))} for values in itertools.product(*(tune[k] for k in keys))]


def balanced(scores: dict) -> bool:
    ratios = scores.get("class_balance")
    return ratios is None or all(0.5 <= r <= 1.5 for r in ratios)


def select(tune: dict, candidates: list[tuple[dict, dict]], reference: dict | None, floor: float) -> dict:
    """The tuning candidate `tune["select"]` prefers; `candidates` are (sampler, mean scores). For
    `recognised` and `requested`, a candidate's KID may not exceed the reference's or the real floor,
    whichever is higher (a difference inside the real images' own KID is noise), its classes must stay
    balanced, and its `nn_ratio` may not fall below the block's `min_nn_ratio` (default 0)."""
    metric = SELECT_METRICS[tune.get("select", "kid")]
    if metric == "kid":
        return min(candidates, key=lambda c: c[1]["kid"])[0]
    limit = max(floor, reference["kid"] if reference else floor)
    nearest = tune.get("min_nn_ratio", 0.0)  # e.g. 1.0: no closer to the training images than unseen real ones
    allowed = [c for c in candidates if balanced(c[1]) and c[1]["kid"] <= limit
               and c[1].get("nn_ratio", float("inf")) >= nearest]
    if not allowed:
        return min(candidates, key=lambda c: c[1]["kid"])[0]
    return max(allowed, key=lambda c: c[1][metric])[0]


class Study:
    def __init__(self, spec_path: str, variants: list[str] | None, seeds: list[int] | None,
                 samplers: list[str] | None = None):
        from denoising_diffusion.sweep import Sweep

        self.spec_path = Path(spec_path)
        self.sweep = Sweep(spec_path, only=variants, seeds=seeds)
        self.evaluation = self.sweep.spec["evaluation"]
        self.only = samplers  # only these samplers and tune blocks (by name); the rest of earlier results is kept
        if samplers:
            known = set(self.evaluation.get("samplers", {})) | {b["name"] for b in tuning_blocks(self.evaluation.get("tune"))}
            unknown = sorted(set(samplers) - known)
            if unknown:
                raise ValueError(f"Unknown samplers {unknown}; the spec has {sorted(known)}.")
        self.budget = self.evaluation["budget"]
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.scorer = None
        self.saved_schedulers = {}  # id(pipe) -> the scheduler the pipeline was saved with

    def models(self):
        """(variant, seed, folder, config) of every run, trained unless already there."""
        for name, settings in self.sweep.runs:
            for seed in self.sweep.seeds:
                folder = self.sweep.out / f"{name}-seed{seed}"
                config, _ = self.sweep.trained({**settings, "seed": seed}, folder)
                yield name, seed, folder, config

    def pipeline(self, folder: Path):
        from denoising_diffusion import CosineDDIMPipeline

        pipe = CosineDDIMPipeline.from_pretrained(folder).to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.saved_schedulers[id(pipe)] = pipe.scheduler  # samplers replace it; `stored` ones put it back
        return pipe

    def run_sampler(self, pipe, sampler: dict, noise_seed: int) -> dict:
        if sampler.get("autoguidance_scale", 1.0) != 1.0 and pipe.guide_unet is None:
            return {"skipped": "no guide_unet"}
        saved = self.saved_schedulers[id(pipe)]
        if sampler.get("stored"):  # the steps and guidance pipe(...) takes without arguments, unless `steps` is given
            pipe.scheduler = saved
            steps = sampler.get("steps")
        else:
            steps = sampler.get("steps") or fitting_steps(pipe, sampler, self.budget, saved)
        nfe = evaluations(pipe, sampler, steps, saved)
        images, labels = self.scorer.sample(pipe, sampler, steps, noise_seed, saved)
        steps = steps or pipe.inference_steps(class_labels_given=bool(sampler.get("conditional")))
        return {"steps": steps, "network_evaluations": nfe, **self.scorer.score(images, labels)}

    def run(self) -> dict:
        per_model = {}  # variant -> [(seed, folder, summary)]
        for name, seed, folder, config in self.models():
            per_model.setdefault(name, []).append((seed, folder, json.loads((folder / "training_summary.json").read_text())))
            if self.scorer is None:
                self.scorer = Scorer(self.evaluation, config, self.device)
        results = {}
        for name, models in per_model.items():
            results[name] = self.score_variant(name, models)
            self.print_variant(name, results[name])
        out = {"spec": self.sweep.spec, "seeds": self.sweep.seeds, "budget": self.budget,
               "num_samples": self.scorer.num_samples, "noise": {"report": REPORT_NOISE, "tuning": TUNING_NOISE},
               "real": self.scorer.reference(), "machine": machine_info(), "variants": results}
        path = RESULTS / f"quality-{self.spec_path.stem}-{machine_tag()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # a run of some variants, seeds or samplers adds to (or replaces) those of an earlier run
            earlier = json.loads(path.read_text())
            before = earlier.get("variants", {})
            results = {name: merge_variant(before.get(name, {}), variant) for name, variant in results.items()}
            out["variants"] = {**before, **results}
            out["seeds"] = sorted(set(earlier.get("seeds", [])) | set(out["seeds"]))  # each row's own: its per_seed
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"Wrote {path}")
        return out

    def score_variant(self, name: str, models: list) -> dict:
        samplers = dict(self.evaluation.get("samplers", {}))
        pipes = [(seed, self.pipeline(folder)) for seed, folder, _ in models]
        variant = {"training": [{"seed": seed, **{k: summary.get(k) for k in (
            "training_seconds", "train_images_per_second", "global_step", "num_parameters", "guide")}}
            for seed, _, summary in models]}
        if self.only:
            samplers = {k: v for k, v in samplers.items() if k in self.only or any(
                b.get("reference") == k and b["name"] in self.only for b in tuning_blocks(self.evaluation.get("tune")))}
        for tune in tuning_blocks(self.evaluation.get("tune")):
            if self.only and tune["name"] not in self.only:
                continue
            if "autoguidance_scale" in tune and any(pipe.guide_unet is None for _, pipe in pipes):
                continue
            candidates = []
            for sampler in tuning_grid(tune):
                scores = [self.run_sampler(pipe, sampler, TUNING_NOISE) for _, pipe in pipes]
                candidates.append((sampler, mean_scores(scores)))
                print(f"  tune {name} {sampler}: " + format_scores(candidates[-1][1]), flush=True)
            reference = None
            if tune.get("reference"):
                ref = [self.run_sampler(pipe, samplers[tune["reference"]], TUNING_NOISE) for _, pipe in pipes]
                reference = mean_scores(ref)
            samplers[tune["name"]] = select(tune, candidates, reference, self.scorer.floor["kid"])
            variant.setdefault("tuning", []).extend({"block": tune["name"], "sampler": s, "mean": m} for s, m in candidates)
        variant["samplers"] = {}
        for sampler_name, sampler in samplers.items():
            runs = [{"seed": seed, **self.run_sampler(pipe, sampler, REPORT_NOISE)} for seed, pipe in pipes]
            if any("skipped" in r for r in runs):
                continue
            variant["samplers"][sampler_name] = {"settings": sampler, "per_seed": runs, "mean": mean_scores(runs)}
        return variant

    def print_variant(self, name: str, variant: dict) -> None:
        print(f"\n{name} (budget {self.budget} network evaluations; seeds {self.sweep.seeds})")
        for sampler_name, result in variant["samplers"].items():
            print(f"  {sampler_name:12s} {result['settings']}: {format_scores(result['mean'])}")


def format_scores(mean: dict) -> str:
    parts = [f"NFE {mean['network_evaluations']:.0f}", f"KID {mean['kid']:.2f} ± {mean['kid_std']:.2f} "
             f"(seeds {mean['kid_seed_spread']:.2f} apart)", f"nn_ratio {mean['nn_ratio']:.3f}"]
    if "recognised" in mean:
        parts.append(f"recognised {mean['recognised']:.1%}")
        parts.append(f"classes {min(mean['class_balance']):.2f}-{max(mean['class_balance']):.2f}x")
    if "requested_recognised" in mean:
        parts.append(f"requested category {mean['requested_recognised']:.1%}")
    return ", ".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="Study spec YAML (benchmarks/studies/*.yaml).")
    parser.add_argument("--variants", nargs="+", default=None, help="Only these variants.")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Overrides the spec's seeds.")
    parser.add_argument("--samplers", nargs="+", default=None,
                        help="Only these samplers and tune blocks (by name; a block's reference sampler runs too); "
                             "the other results of the variants in the results file are kept.")
    args = parser.parse_args()
    yaml.safe_load(Path(args.spec).read_text())  # fail early on a malformed spec
    Study(args.spec, args.variants, args.seeds, args.samplers).run()


if __name__ == "__main__":
    main()
