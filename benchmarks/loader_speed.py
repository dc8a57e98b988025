"""Images/s of the training DataLoader alone (no model), as the trainer builds it, against the same
images decoded into nested lists and read in torch format (how they were stored before).

    python benchmarks/loader_speed.py [--config configs/emoji.yaml] [--batch_size 256] [--workers 0 2] [--batches 20]

A training run cannot be faster than its loader: on a GPU this is the figure to compare with the
model's training images/s (`training_speed.py`). Each (layout, workers) pair is timed over `--batches`
batches after one warm-up batch, `--repeats` times in turns; the table gives the median and the best.
Writes benchmarks/results/loader_speed-<machine>.json.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine_info, machine_tag  # noqa: E402


def nested_list_dataset(config):
    """The images decoded as the trainer did before: a nested-list column read in torch format (int64)."""
    from denoising_diffusion.training.data import ImageDecoder, _undecoded, load_raw_dataset

    raw = _undecoded(load_raw_dataset(config), config.image_column)
    return raw.map(ImageDecoder(config), batched=True, with_indices=True, remove_columns=raw.column_names,
                   desc="Decoding images (nested lists)").with_format("torch")


def images_per_second(loader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # warm-up: workers started, first batch prefetched
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += next(iterator)["pixel_values"].shape[0]
        except StopIteration:
            iterator = iter(loader)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "emoji.yaml"))
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from denoising_diffusion.training import parse_config
    from denoising_diffusion.training.data import prepare_dataset

    config = parse_config(["--config", args.config, "--output_dir", str(ROOT / "outputs" / "loader_speed")])
    if not config.center_crop or config.streaming:
        raise SystemExit("loader_speed.py compares the decoded-once layouts: use a config with center_crop and "
                         "no streaming.")
    images = prepare_dataset(config)
    layouts = {"uint8 Array3D, numpy format (the trainer's)": images,
               "nested lists, torch format (before)": nested_list_dataset(config)}
    loaders = {}
    for name, data in layouts.items():
        for workers in args.workers:
            if hasattr(data, "dataloader"):
                loader = data.dataloader(args.batch_size, config.seed, workers)
            else:
                loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True,
                                                     num_workers=workers, persistent_workers=workers > 0)
            loaders[(name, workers)] = loader
    rates = {key: [] for key in loaders}
    for _ in range(args.repeats):  # in turns, so a busy machine slows them all alike
        for key, loader in loaders.items():
            rates[key].append(images_per_second(loader, args.batches))
    info = machine_info()
    base = statistics.median(rates[(list(layouts)[1], args.workers[0])])
    lines = [f"Machine: {info['cpu']} ({info['cores']} cores), torch {info['torch']}; {Path(args.config).name}, "
             f"{config.resolution}x{config.resolution}x{config.channels}, batch {args.batch_size}.", "",
             "| layout | workers | images/s (median, best) | vs nested lists, first workers setting |",
             "| --- | ---: | ---: | ---: |"]
    for (name, workers), values in rates.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {workers} | {median:,.0f} ({max(values):,.0f}) | {median / base:.1f}x |")
    print("\n".join(lines))
    out = RESULTS / f"loader_speed-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "config": Path(args.config).name, "batch_size": args.batch_size,
                               "rates": [{"layout": n, "workers": w, "images_per_s": v} for (n, w), v in rates.items()]},
                              indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
