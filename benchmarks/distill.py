"""Progressive distillation: each student at its step count against its original teacher.

    python benchmarks/distill.py --teacher outputs/digits --students outputs/distill_digits [--num_samples 1000]

The teacher is sampled with DDIM at 1/2/4/5/8/50 steps and DPM-Solver++(2M) at 5 and 10; each
student (`student-N-steps` folders) with DDIM at its own N. KID on digits features and the fraction
recognised by the held-out digits classifier (p >= 0.9). Also sums the rounds' training time (the
distillation's extra cost). Prints a markdown table, writes benchmarks/results/distill-<machine>.json.
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, machine_tag  # noqa: E402

from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler, CosineDPMSolverScheduler  # noqa: E402
from denoising_diffusion.evaluation.scoring import generate, score_samples  # noqa: E402
from denoising_diffusion.training.data import data_config, real_images  # noqa: E402
from denoising_diffusion.evaluation.features import feature_extractor  # noqa: E402
from denoising_diffusion.evaluation.kid import extract_features  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="outputs/digits")
    parser.add_argument("--students", default="outputs/distill_digits")
    parser.add_argument("--teacher_steps", type=int, nargs="+", default=[1, 2, 4, 5, 8, 50])
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    extractor = feature_extractor("digits")
    teacher = CosineDDIMPipeline.from_pretrained(args.teacher)
    teacher.set_progress_bar_config(disable=True)
    real = extract_features(real_images(data_config(Path(args.teacher), teacher, None, None, None), 10000), extractor)

    def score(pipe, steps, scheduler=None):
        fake, seconds = generate(pipe, args.num_samples, steps, seed=0, scheduler=scheduler)
        return {**score_samples(fake, real, extractor), "seconds": seconds}

    rows = []
    for steps in args.teacher_steps:
        rows.append({"model": "teacher", "sampler": "DDIM", "steps": steps,
                     **score(teacher, steps, CosineDDIMScheduler.from_config(teacher.scheduler.config))})
        print(json.dumps(rows[-1]), flush=True)
    for steps in (5, 10):
        rows.append({"model": "teacher", "sampler": "DPM-Solver++(2M)", "steps": steps,
                     **score(teacher, steps, CosineDPMSolverScheduler.from_config(teacher.scheduler.config))})
        print(json.dumps(rows[-1]), flush=True)
    folders = sorted((p for p in Path(args.students).glob("student-*-steps") if (p / "model_index.json").exists()),
                     key=lambda p: -int(re.search(r"student-(\d+)-steps", p.name).group(1)))
    training_seconds = 0.0
    for folder in folders:
        student = CosineDDIMPipeline.from_pretrained(folder)
        student.set_progress_bar_config(disable=True)
        steps = student.config.distilled_steps
        seconds = json.loads((folder / "training_summary.json").read_text())["training_seconds"]
        training_seconds += seconds
        rows.append({"model": folder.name, "sampler": "DDIM", "steps": steps, "round_training_seconds": seconds,
                     **score(student, steps)})
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| model | sampler | steps | KID | recognised (p >= 0.9) |", "| --- | --- | ---: | :--- | ---: |"]
    lines += [f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['kid']:.2f} ± {r['kid_std']:.2f} | "
              f"{r['recognised']:.1%} |" for r in rows]
    real_recognised = extractor.held_out_recognised_fraction()
    lines.append(f"\nDistillation training time, all rounds: {training_seconds / 60:.1f} minutes. Real held-out digits "
                 f"recognised: {real_recognised:.1%}.")
    print("\n".join(lines))
    out = Path(args.output) if args.output else RESULTS / f"distill-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"teacher": args.teacher, "students": args.students, "num_samples": args.num_samples,
                               "distillation_training_seconds": training_seconds, "machine": machine_info(),
                               "real_held_out_recognised": real_recognised,
                               "results": rows}, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
