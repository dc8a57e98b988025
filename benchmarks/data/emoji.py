"""Real 64x64 RGB images offline: Google's Noto Color Emoji from the npm package
`emoji-datasource-google` (MIT; the images are Apache-2.0) as a local Hugging Face dataset.

    python benchmarks/data/emoji.py                       # npm pack + convert -> data/emoji
    python benchmarks/data/emoji.py --tarball emoji-datasource-google-16.0.0.tgz --out data/emoji

The package ships 3,786 RGBA PNGs (`img/google/64/`) and `emoji.json`, which puts every emoji and its
skin-tone variations in a category. The dataset written here (`save_to_disk`, about 20 MB) has
`image` (RGB, composited on white, 64x64), `label` (the category, a `ClassLabel` of the 9
categories; the 5 "Component" images, hair and skin swatches, are left out) and `name`. Train on
it with `dataset_name: data/emoji` (configs/emoji.yaml, configs/emoji32.yaml). Not a runtime
dependency of the package, and the data is not committed.
"""

import argparse
import io
import json
import subprocess
import tarfile
from pathlib import Path

PACKAGE = "emoji-datasource-google@16.0.0"
CATEGORIES = ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
              "Activities", "Objects", "Symbols", "Flags"]


def fetch_tarball(folder: Path) -> Path:
    """`npm pack` the package into `folder` (npm's registry is reachable where PyPI is)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = subprocess.run(["npm", "pack", PACKAGE], cwd=folder, check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    return folder / name


def read_emoji(tarball: Path):
    """(file name -> (category, name)) from emoji.json, and (file name -> PNG bytes) from the tarball."""
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        meta = json.load(tar.extractfile(members["package/emoji.json"]))
        pngs = {Path(n).name: tar.extractfile(m).read() for n, m in members.items()
                if n.startswith("package/img/google/64/") and n.endswith(".png")}
    labels = {}
    for emoji in meta:
        labels[emoji["image"]] = (emoji["category"], emoji["short_name"])
        for variation, info in (emoji.get("skin_variations") or {}).items():
            labels[info["image"]] = (emoji["category"], f"{emoji['short_name']}:{variation}")
    return labels, pngs


def build(tarball: Path, out: Path):
    import PIL.Image
    from datasets import ClassLabel, Dataset, Features, Image, Value

    labels, pngs = read_emoji(tarball)
    rows = {"image": [], "label": [], "name": []}
    missing = sorted(set(pngs) - set(labels))
    if missing:
        raise SystemExit(f"{len(missing)} images have no entry in emoji.json, e.g. {missing[:3]}")
    for file_name in sorted(pngs):
        category, name = labels[file_name]
        if category not in CATEGORIES:
            continue
        rgba = PIL.Image.open(io.BytesIO(pngs[file_name])).convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = PIL.Image.alpha_composite(white, rgba).convert("RGB")
        if rgb.size != (64, 64):
            rgb = rgb.resize((64, 64), PIL.Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG")
        rows["image"].append({"bytes": buffer.getvalue(), "path": None})
        rows["label"].append(CATEGORIES.index(category))
        rows["name"].append(name)
    features = Features({"image": Image(), "label": ClassLabel(names=CATEGORIES), "name": Value("string")})
    dataset = Dataset.from_dict(rows, features=features)
    dataset.save_to_disk(str(out))
    return dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tarball", type=Path, default=None, help="the npm tarball (default: npm pack it)")
    parser.add_argument("--out", type=Path, default=Path("data/emoji"))
    args = parser.parse_args(argv)
    tarball = args.tarball or fetch_tarball(args.out.parent / "npm")
    dataset = build(tarball, args.out)
    counts = {name: dataset["label"].count(i) for i, name in enumerate(CATEGORIES)}
    print(f"Wrote {len(dataset)} images to {args.out}: {counts}")


if __name__ == "__main__":
    main()
