"""Few-step sampling: KID of DDIM vs DPM-Solver++(2M) on the same model, same noise, same real images.

    python benchmarks/solvers.py --model outputs/digits [--steps 5 10 20] [--num_samples 1000]

Prints a markdown table and writes benchmarks/results/solvers-<machine>.json.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, machine_tag  # noqa: E402

from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler, CosineDPMSolverScheduler  # noqa: E402
from denoising_diffusion.evaluate import data_config, model_folder, real_images  # noqa: E402
from denoising_diffusion.evaluation.features import feature_extractor  # noqa: E402
from denoising_diffusion.evaluation.kid import extract_features, generate, kid_fid  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/digits")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--features", default="digits", choices=["digits", "inception"])
    args = parser.parse_args()

    folder = model_folder(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = CosineDDIMPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    extractor = feature_extractor(args.features).to(device)
    real = extract_features(real_images(data_config(folder, pipe, None, None, None), 10000), extractor)
    rows = []
    for name, cls in (("DDIM", CosineDDIMScheduler), ("DPM-Solver++(2M)", CosineDPMSolverScheduler)):
        for steps in args.steps:
            fake, seconds = generate(pipe, args.num_samples, steps, seed=0, scheduler=cls.from_config(pipe.scheduler.config))
            scores = kid_fid(real, extract_features(fake, extractor))
            rows.append({"solver": name, "steps": steps, **scores, "seconds": seconds})
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| solver | steps | KID | FID | time (s) |", "| --- | ---: | :--- | ---: | ---: |"]
    lines += [f"| {r['solver']} | {r['steps']} | {r['kid']:.3f} ± {r['kid_std']:.3f} | {r['fid']:.2f} | {r['seconds']:.1f} |"
              for r in rows]
    print("\n".join(lines))
    result = {"model": args.model, "num_samples": args.num_samples, "features": args.features,
              "machine": machine_info(), "results": rows}
    out = Path(__file__).resolve().parent / "results" / f"solvers-{machine_tag()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
