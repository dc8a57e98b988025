"""Offline quality numbers for RGB: KID on the features of an emoji-category classifier, and how
often the requested category is recognised, for a class-conditional model trained on data/emoji.

    python benchmarks/emoji_quality.py --model outputs/emoji32 [--per_class 50] [--scales 1 2 3]

Inception weights cannot be downloaded here, so KID uses the 128-d penultimate features of a small
CNN trained (70% of the emoji, stratified, seed 0; its held-out accuracy is printed) to tell the 9
categories apart at the model's resolution. These KIDs are NOT comparable with published
Inception KIDs: they compare runs measured here with each other. Writes
benchmarks/results/emoji_quality-<machine>.json.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import ROOT, machine_info, machine_tag  # noqa: E402


class CategoryClassifier(nn.Module):
    """A small CNN for RGB images in [0, 1] at `size` (images of other sizes are resized)."""

    def __init__(self, size: int, classes: int = 9):
        super().__init__()
        self.size = size
        block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(),  # noqa: E731
                                           nn.MaxPool2d(2))
        self.conv = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(128, 128), nn.SiLU())
        self.head = nn.Linear(128, classes)

    def features(self, images):
        images = images.float()
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="area")
        return self.fc(self.conv(images * 2 - 1))

    def forward(self, images):
        return self.head(self.features(images))


def load_emoji(path: str, size: int):
    from datasets import load_from_disk

    from denoising_diffusion.training.config import TrainingConfig
    from denoising_diffusion.training.data import prepare_dataset

    config = TrainingConfig(dataset_name=path, resolution=size, channels=3, label_column="label",
                            normalization="minus_one_one")
    data = prepare_dataset(config)
    names = load_from_disk(path).features["label"].names
    return data[:]["pixel_values"].float() / 255.0, data[:]["labels"].long(), names


def train_classifier(images, labels, size, epochs=30, seed=0):
    from sklearn.model_selection import train_test_split

    idx_train, idx_test = train_test_split(torch.arange(len(labels)), test_size=0.3, random_state=seed,
                                           stratify=labels)
    torch.manual_seed(seed)
    model = CategoryClassifier(size, int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    # Balanced batches: "People & Body" holds most images (skin-tone variations).
    weights = 1.0 / torch.bincount(labels[idx_train]).float()[labels[idx_train]]
    for _ in range(epochs):
        model.train()
        order = idx_train[torch.multinomial(weights, len(idx_train), replacement=True, generator=generator)]
        for batch in order.split(128):
            x = images[batch]
            shift = tuple(torch.randint(-2, 3, (2,), generator=generator).tolist())
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(c).argmax(1) for c in images[idx_test].split(512)])
    recall = [(predicted[labels[idx_test] == c] == c).float().mean().item() for c in range(int(labels.max()) + 1)]
    return model, (predicted == labels[idx_test]).float().mean().item(), sum(recall) / len(recall)


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
    real = extract_features(images, _Features(classifier))
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
            scores = kid_fid(real, extract_features(fake, _Features(classifier)))
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
    out = Path(__file__).resolve().parent / "results" / f"emoji_quality-{machine_tag()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")


class _Features(nn.Module):
    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images):
        return self.classifier.features(images)


def category_features(config) -> tuple[nn.Module, float]:
    """For another benchmark: the classifier's features for `config`'s emoji data at its resolution
    (images in [0, 1] -> (N, 128)), and the classifier's held-out balanced accuracy."""
    images, labels, _ = load_emoji(config.dataset_name, config.resolution)
    with torch.enable_grad():
        classifier, _, balanced = train_classifier(images, labels, config.resolution)
    return _Features(classifier).eval(), balanced


if __name__ == "__main__":
    main()
