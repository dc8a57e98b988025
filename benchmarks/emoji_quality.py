"""Offline quality numbers for RGB: KID on the features of an emoji-category classifier, and how
often the requested category is recognised, for a class-conditional model trained on data/emoji.

    python benchmarks/emoji_quality.py --model outputs/emoji32 [--per_class 50] [--scales 1 2 3]

KID uses the features of the emoji-category classifier of `emoji_classifier.py` (its held-out
accuracy is printed); these KIDs are NOT comparable with published Inception KIDs. Writes
benchmarks/results/emoji_quality-<machine>.json.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine_info, machine_tag  # noqa: E402
from emoji_classifier import CategoryFeatures, load_emoji, train_classifier  # noqa: E402


@torch.no_grad()
def main():
    from denoising_diffusion import CosineDDIMPipeline, CosineDPMSolverScheduler
    from denoising_diffusion.evaluation.kid import extract_features, kid_fid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "outputs/emoji32"))
    parser.add_argument("--data", default=str(ROOT / "data/emoji"))
    parser.add_argument("--per_class", type=int, default=50)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = CosineDDIMPipeline.from_pretrained(args.model).to(device)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size
    images, labels, names = load_emoji(args.data, size)
    with torch.enable_grad():
        classifier, accuracy, balanced = train_classifier(images, labels, size)
    classifier = classifier.to(device)
    print(f"category classifier on held-out real emoji: accuracy {accuracy:.3f}, balanced accuracy {balanced:.3f}")
    real = extract_features(images, CategoryFeatures(classifier))
    requested = torch.arange(len(names), device=device).repeat_interleave(args.per_class)
    rows = []
    for solver, steps in (("DDIM", args.steps), ("DPM-Solver++(2M)", 10)):
        pipe.scheduler = (CosineDPMSolverScheduler if solver != "DDIM" else type(pipe.scheduler)).from_config(
            pipe.scheduler.config)
        for scale in args.scales:
            fake = []
            for i, chunk in enumerate(requested.split(225)):
                fake.append(pipe(batch_size=len(chunk), class_labels=chunk, guidance_scale=scale,
                                 num_inference_steps=steps, generator=torch.Generator(device).manual_seed(i),
                                 output_type="pt").images.float().cpu())
            fake = torch.cat(fake)
            predicted = torch.cat([classifier(c.to(device)).argmax(1).cpu() for c in fake.split(512)])
            per_class = [(predicted[requested.cpu() == c] == c).float().mean().item() for c in range(len(names))]
            scores = kid_fid(real, extract_features(fake, CategoryFeatures(classifier)))
            rows.append({"solver": solver, "steps": steps, "guidance_scale": scale, **scores,
                         "recognised": sum(per_class) / len(per_class), "per_class": dict(zip(names, per_class))})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_class"}), flush=True)
    lines = ["| sampler | steps | guidance | KID (category features, not Inception) | requested category recognised |",
             "| --- | ---: | ---: | --- | ---: |"]
    lines += [f"| {r['solver']} | {r['steps']} | {r['guidance_scale']:g} | {r['kid']:.2f} ± {r['kid_std']:.2f} "
              f"| {r['recognised']:.1%} |" for r in rows]
    print("\n".join(lines))
    result = {"model": args.model, "per_class": args.per_class, "classifier_test_accuracy": accuracy,
              "classifier_balanced_accuracy": balanced, "machine": machine_info(), "results": rows}
    out = RESULTS / f"emoji_quality-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
