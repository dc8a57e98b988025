"""Class-conditional accuracy: how often a held-out digits classifier recognises the requested digit.

    python benchmarks/guidance.py --model outputs/digits_cond [--per_class 100] [--scales 1 2 3]

The classifier is the one KID uses for digits (trained on 70% of scikit-learn's digits, its
held-out accuracy printed). Prints a markdown table and writes benchmarks/results/guidance-<machine>.json.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, machine_tag  # noqa: E402

from denoising_diffusion import CosineDDIMPipeline  # noqa: E402
from denoising_diffusion.evaluation.features import load_digits_classifier  # noqa: E402


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/digits_cond")
    parser.add_argument("--per_class", type=int, default=100)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = CosineDDIMPipeline.from_pretrained(args.model).to(device)
    pipe.set_progress_bar_config(disable=True)
    classifier, accuracy = load_digits_classifier()
    classifier = classifier.to(device)
    classes = pipe.null_class_label
    labels = torch.arange(classes, device=device).repeat_interleave(args.per_class)
    print(f"classifier held-out accuracy on real digits: {accuracy:.3f}")
    rows = []
    for scale in args.scales:
        predicted = []
        for chunk in labels.split(250):
            images = pipe(batch_size=len(chunk), class_labels=chunk, guidance_scale=scale, num_inference_steps=args.steps,
                          generator=torch.Generator(device).manual_seed(len(predicted)), output_type="pt").images
            predicted.append(classifier(images.to(device)).argmax(1))
        predicted = torch.cat(predicted)
        per_class = [(predicted[labels == c] == c).float().mean().item() for c in range(classes)]
        rows.append({"guidance_scale": scale, "accuracy": (predicted == labels).float().mean().item(),
                     "worst_class": int(min(range(classes), key=lambda c: per_class[c])),
                     "worst_class_accuracy": min(per_class), "per_class": per_class})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_class"}), flush=True)
    lines = ["| guidance scale | accuracy | worst class (accuracy) |", "| ---: | ---: | :--- |"]
    lines += [f"| {r['guidance_scale']:g} | {r['accuracy']:.3f} | {r['worst_class']} ({r['worst_class_accuracy']:.2f}) |"
              for r in rows]
    print("\n".join(lines))
    result = {"model": args.model, "per_class": args.per_class, "steps": args.steps,
              "classifier_test_accuracy": accuracy, "machine": machine_info(), "results": rows}
    out = RESULTS / f"guidance-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
