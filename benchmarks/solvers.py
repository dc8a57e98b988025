"""Few-step sampling: DDIM vs DPM-Solver++(2M), and where the step times fall, on the same model.

    python benchmarks/solvers.py --model outputs/digits [--steps 5 10 20] [--spacings time log_snr karras]
                                 [--num_samples 1000] [--seeds 0 1]

Every (solver, spacing, steps) row uses the same starting noises (one set per seed) and the same
real images. Reports KID (mean ± std over subsets; with several seeds, the mean over seeds and the
spread between them) and, with digits features, the fraction of samples the held-out digits
classifier recognises with probability >= 0.9. Prints a markdown table and writes
benchmarks/results/solvers-<machine>.json.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, machine_tag, mean_over_seeds  # noqa: E402

from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler, CosineDPMSolverScheduler  # noqa: E402
from denoising_diffusion.evaluation.scoring import generate, model_folder, score_samples  # noqa: E402
from denoising_diffusion.training.data import data_config, real_images  # noqa: E402
from denoising_diffusion.evaluation.features import feature_extractor  # noqa: E402
from denoising_diffusion.evaluation.kid import extract_features  # noqa: E402
from denoising_diffusion.schedulers.noise_schedule import SPACINGS  # noqa: E402

SOLVERS = {"ddim": ("DDIM", CosineDDIMScheduler), "dpm": ("DPM-Solver++(2M)", CosineDPMSolverScheduler)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/digits")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    parser.add_argument("--spacings", nargs="+", default=list(SPACINGS), choices=list(SPACINGS))
    parser.add_argument("--rho", type=float, default=7.0, help="Exponent of the karras spacing.")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Starting-noise seeds (one run each).")
    parser.add_argument("--features", default="digits", choices=["digits", "inception"])
    parser.add_argument("--output", default=None, help="JSON file (default: benchmarks/results/solvers-<machine>.json).")
    args = parser.parse_args()

    folder = model_folder(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = CosineDDIMPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    extractor = feature_extractor(args.features).to(device)
    real = extract_features(real_images(data_config(folder, pipe, None, None, None), 10000), extractor)
    digits = args.features == "digits"
    rows = []
    for solver in args.solvers:
        name, cls = SOLVERS[solver]
        for spacing in args.spacings:
            scheduler = cls.from_config(pipe.scheduler.config, timestep_spacing=spacing, rho=args.rho)
            for steps in args.steps:
                runs = []
                for seed in args.seeds:
                    fake, seconds = generate(pipe, args.num_samples, steps, seed=seed, scheduler=scheduler)
                    scores = score_samples(fake, real, extractor)
                    runs.append({"seed": seed, **scores, "seconds": seconds})
                rows.append({"solver": name, "spacing": spacing, "steps": steps,
                             **mean_over_seeds([{k: v for k, v in r.items() if k != "seed"} for r in runs]),
                             "runs": runs})
                row = rows[-1]
                print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
    header = "| solver | spacing | steps | KID | FID |" + (" recognised (p >= 0.9) |" if digits else "")
    lines = [header, "| --- | --- | ---: | :--- | ---: |" + (" ---: |" if digits else "")]
    for r in rows:
        spread = f" (seeds {r['kid_seed_spread']:.2f} apart)" if r["kid_seed_spread"] is not None else ""
        lines.append(f"| {r['solver']} | {r['spacing']} | {r['steps']} | {r['kid']:.2f} ± {r['kid_std']:.2f}{spread} | "
                     f"{r['fid']:.2f} |" + (f" {r['recognised']:.1%} |" if digits else ""))
    result = {"model": args.model, "num_samples": args.num_samples, "seeds": args.seeds, "features": args.features,
              "rho": args.rho, "machine": machine_info(), "results": rows}
    if digits:
        result["real_held_out_recognised"] = extractor.held_out_recognised_fraction()
        lines.append(f"\nReal held-out digits recognised: {result['real_held_out_recognised']:.1%}")
    print("\n".join(lines))
    out = Path(args.output) if args.output else RESULTS / f"solvers-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
