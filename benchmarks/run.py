"""Ours vs the stock diffusers recipe on the same machine, side by side in one run.

    python benchmarks/run.py [--quick] [--steps N] [--device cuda] [--config configs/digits.yaml]
                             [--stock_lrs 1e-4 3e-4 1e-3] [--seeds 42 43] [--ours_models outputs/digits]
    python benchmarks/run.py --config configs/emoji32.yaml --unconditional --features emoji

Stock recipe = diffusers' `examples/unconditional_image_generation/train_unconditional.py`:
`UNet2DModel` (residual blocks with self-attention at the middle resolution and in the mid block),
`DDPMScheduler` (1000 steps, linear betas), epsilon prediction, MSE, AdamW (betas 0.95/0.999,
weight decay 1e-6), cosine LR with warm-up (500 steps, at most a tenth of the run), EMA (inv_gamma 1,
power 3/4), data in [-1, 1], sampled with `DDIMPipeline`. Its widths are chosen so its parameter count
is within 10% of ours. Both train on the same data, batch size and number of steps (so the same
number of training images).

A fair comparison tunes the baseline: the stock recipe is trained at every learning rate of
`--stock_lrs` (its shipped 1e-4 among them) with the first seed; "stock as shipped" is lr 1e-4,
"stock tuned" the learning rate with the lowest KID at any step count. Ours and tuned stock are then
trained again with the other `--seeds`, and KIDs are averaged over seeds.

With `--unconditional` a class-conditional config is trained without its labels (the stock recipe is
unconditional, so both learn the same task). `--features emoji` scores the Noto emoji
(benchmarks/data/emoji.py) with the category classifier of benchmarks/emoji_quality.py, trained here
on the config's data (not comparable with Inception KIDs); `--features inception --inception_weights
PATH` for data with downloadable Inception weights.

Measures: (1) KID at 10/20/50 sampling steps (`--features auto`: digits features for the built-in
digits, otherwise Inception), for ours with DDIM and with DPM-Solver++(2M), and, with digits features, the fraction
of samples the held-out digits classifier recognises with probability >= 0.9 (and of real held-out
digits); (2) training images/s after warm-up; (3) sampling images/s at 20 steps, batch 256; (4) the
machine's measured matmul peak, the models' FLOPs per image (torch.utils.flop_counter) and the
fraction of peak each run achieves. Writes benchmarks/results/run-<machine>.json, prints markdown
tables and saves 36-sample grids of every model and step count under `--output_dir`/samples.
"""

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import RESULTS, ROOT, flops_per_image, machine_info, machine_tag, matmul_peak, stock_unet, sync  # noqa: E402


def train_stock(config, steps: int, device: str, learning_rate: float = 1e-4, seed: int | None = None,
                log_every: int = 100):
    """train_unconditional.py's loop (single process) on our prepared data; returns (pipeline, images/s)."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from denoising_diffusion.training.data import prepare_dataset
    from denoising_diffusion.training.components import build_unet

    seed = config.seed if seed is None else seed
    torch.manual_seed(seed)
    ours_params = sum(p.numel() for p in build_unet(config).parameters())
    model = stock_unet(config.resolution, config.channels, ours_params).to(device)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=min(500, steps // 10),
                                 num_training_steps=steps)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    dataset = prepare_dataset(config).dataset  # decoded examples (center crops)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.train_batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    step, images, warm_start = 0, 0, None
    while step < steps:
        for batch in loader:
            x0 = batch["pixel_values"].to(device).float() / 127.5 - 1.0
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (x0.shape[0],), device=device)
            noisy = noise_scheduler.add_noise(x0, noise, t)
            loss = F.mse_loss(model(noisy, t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(model.parameters())
            step += 1
            if step == 20:
                sync(device)
                warm_start = time.perf_counter()
            elif step > 20:
                images += x0.shape[0]
            if step % log_every == 0:
                print(f"  stock lr {learning_rate:g} seed {seed} step {step}/{steps} loss {loss.item():.4f}", flush=True)
            if step >= steps:
                break
    sync(device)
    throughput = images / (time.perf_counter() - warm_start)
    ema.copy_to(model.parameters())
    pipe = DDIMPipeline(model.eval(), DDIMScheduler.from_config(noise_scheduler.config)).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, throughput


def train_ours(config, steps: int, output_dir: Path, seed: int | None = None):
    """Our real training path; its summary records images/s after 20 warm-up steps."""
    from denoising_diffusion import CosineDDIMPipeline
    from denoising_diffusion.training import train

    config = common.without_periodic_work(copy.deepcopy(config), steps)  # no host syncs inside the timed loop
    config.output_dir, config.overwrite_output_dir, config.logger = str(output_dir), True, "none"
    config.seed = config.seed if seed is None else seed
    out = train(config)
    throughput = json.loads((out / "training_summary.json").read_text())["train_images_per_second"]
    pipe = CosineDDIMPipeline.from_pretrained(out).to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe, throughput


@torch.no_grad()
def sampling_throughput(pipe, device: str, batch: int = 256, steps: int = 20) -> float:
    generator = torch.Generator(device).manual_seed(0)
    pipe(batch_size=8, num_inference_steps=2, generator=generator, output_type="pt")  # warm-up
    sync(device)
    start = time.perf_counter()
    pipe(batch_size=batch, num_inference_steps=steps, generator=generator, output_type="pt")
    sync(device)
    return batch / (time.perf_counter() - start)


@torch.no_grad()
def kid_table(pipe, real_features, extractor, step_counts, num_samples, device, stock: bool, scheduler=None,
              grid: Path | None = None):
    """{steps: {"kid", "kid_std", "fid"[, "recognised"]}} for samples from the same noise at each step count.

    With `grid`, the first 36 samples at each step count are saved as `<grid>-<steps>steps.png`, to judge by eye.
    """
    from denoising_diffusion.evaluation.scoring import score_samples
    from denoising_diffusion.images import image_grid

    if scheduler is not None:
        pipe.scheduler = scheduler
    rows = {}
    for steps in step_counts:
        images = []
        generator = torch.Generator(device).manual_seed(0)
        for start in range(0, num_samples, 256):
            n = min(256, num_samples - start)
            out = pipe(batch_size=n, num_inference_steps=steps, generator=generator, output_type="pt" if not stock else "np")
            batch = out.images if not stock else torch.from_numpy(out.images).permute(0, 3, 1, 2)
            images.append(batch.float().cpu())
        images = torch.cat(images)
        if grid is not None:
            grid.parent.mkdir(parents=True, exist_ok=True)
            image_grid(images[:36]).save(f"{grid}-{steps}steps.png")
        rows[steps] = score_samples(images, real_features, extractor)
    return rows


def mean_over_seeds(tables: list[dict]) -> dict:
    """Per-seed {steps: scores} tables -> {steps: scores averaged over seeds, with `kid_seed_spread`}."""
    return {steps: common.mean_over_seeds([t[steps] for t in tables]) for steps in tables[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/digits.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="Training steps for both (default: the config's).")
    parser.add_argument("--quick", action="store_true", help="300 training steps, 500 KID samples.")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--sample_steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--stock_lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3],
                        help="Learning rates of the stock recipe's sweep (1e-4 = as shipped).")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="Training seeds (default: the config's). The sweep uses the first; ours and tuned stock "
                             "repeat with the others.")
    parser.add_argument("--unconditional", action="store_true",
                        help="Train ours without the config's class labels (the stock recipe is unconditional).")
    parser.add_argument("--features", default="auto", choices=["auto", "digits", "emoji", "inception"],
                        help="KID features: auto = digits for the built-in digits, else Inception; emoji = a category "
                             "classifier trained on the config's data (benchmarks/emoji_quality.py).")
    parser.add_argument("--inception_weights", default=None, help="Local Inception weights (for --features inception).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "benchmark"))
    parser.add_argument("--ours_models", nargs="+", default=[],
                        help="Finished runs of the same config and steps, one per seed in --seeds order (e.g. "
                             "outputs/digits for the config's seed): reuse their pipelines and measured training "
                             "images/s instead of training ours again.")
    parser.add_argument("--output", default=None, help="JSON file (default: benchmarks/results/run-<machine>.json).")
    args = parser.parse_args()

    from denoising_diffusion import CosineDDIMScheduler, CosineDPMSolverScheduler
    from denoising_diffusion.evaluation.features import feature_extractor, resolve_features
    from denoising_diffusion.evaluation.kid import extract_features
    from denoising_diffusion.training import parse_config
    from denoising_diffusion.training.data import prepare_dataset
    from denoising_diffusion.training.components import build_unet

    config = parse_config(["--config", args.config])
    if args.unconditional:
        config.label_column, config.cond_drop_prob = None, 0.0
        config.unet = {**config.unet, "num_class_embeds": None}
    if args.device == "cpu":
        config.mixed_precision = "no"
    seeds = args.seeds or [config.seed]
    dataset = prepare_dataset(config)
    per_epoch = math.ceil(dataset.num_examples / config.train_batch_size)
    steps = args.steps or (300 if args.quick else config.num_epochs * per_epoch)
    if steps <= 20:
        parser.error(f"--steps {steps} is too few: training images/s leave out the first 20 steps (warm-up), "
                     "so both runs need more than 20.")
    num_samples = 500 if args.quick else args.num_samples
    sample_steps = tuple(args.sample_steps)
    device = args.device
    info = machine_info()
    print(f"machine: {info}")
    print(f"training steps: {steps}, batch {config.train_batch_size} ({steps * config.train_batch_size:,} images), "
          f"KID samples: {num_samples}, seeds {seeds}, stock learning rates {args.stock_lrs}")

    ours_model = build_unet(config)
    ours_params = sum(p.numel() for p in ours_model.parameters())
    stock_model = stock_unet(config.resolution, config.channels, ours_params)
    stock_params = sum(p.numel() for p in stock_model.parameters())
    shape = (config.channels, config.resolution, config.resolution)
    flops = {"ours": flops_per_image(ours_model.to(device), shape, 0.5, device),
             "stock": flops_per_image(stock_model.to(device), shape, 500, device)}
    peak = matmul_peak(device, torch.float32)
    print(f"params ours {ours_params:,}, stock {stock_params:,} ({stock_params / ours_params:.3f}x); "
          f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")

    name = resolve_features(args.features, config.dataset_name, config.train_data_dir)
    if name == "emoji":
        from emoji_classifier import category_features

        extractor, accuracy = category_features(config)
        print(f"emoji category classifier: held-out balanced accuracy {accuracy:.3f}")
        extractor = extractor.to(device)
    else:
        extractor = feature_extractor(name, args.inception_weights).to(device)
    real = extract_features(dataset.pixels(dataset.num_examples).float() / 255.0, extractor)
    digits = name == "digits"

    samples_dir = Path(args.output_dir) / "samples"  # sample grids per model and step count
    # Ours, every seed; sampled with DDIM and with DPM-Solver++(2M), each with its scheduler defaults.
    ours_kids = {"ddim": [], "dpm": []}
    for index, seed in enumerate(seeds):
        if index < len(args.ours_models):
            from denoising_diffusion import CosineDDIMPipeline

            folder = Path(args.ours_models[index])
            summary = json.loads((folder / "training_summary.json").read_text())
            trained_seed = yaml.safe_load((folder / "training_config.yaml").read_text()).get("seed")
            if summary["global_step"] != steps or trained_seed != seed:
                sys.exit(f"{folder} trained {summary['global_step']} steps with seed {trained_seed}, not {steps} "
                         f"steps with seed {seed}; pass matching --steps / --seeds.")
            pipe = CosineDDIMPipeline.from_pretrained(folder).to(device)
            pipe.set_progress_bar_config(disable=True)
            train_speed = summary["train_images_per_second"]
        else:
            print(f"training ours, seed {seed} ...", flush=True)
            pipe, train_speed = train_ours(config, steps, Path(args.output_dir) / f"ours-seed{seed}", seed)
        if index == 0:
            ours_train, ours_sample = train_speed, sampling_throughput(pipe, device)
        base = pipe.scheduler.config
        for solver, cls in (("ddim", CosineDDIMScheduler), ("dpm", CosineDPMSolverScheduler)):
            table = kid_table(pipe, real, extractor, sample_steps, num_samples, device, stock=False,
                              scheduler=cls.from_config(base), grid=samples_dir / f"ours-seed{seed}-{solver}")
            ours_kids[solver].append(table)
            print(f"ours seed {seed} {solver}: " + json.dumps({s: round(r["kid"], 3) for s, r in table.items()}), flush=True)

    # Stock: the learning-rate sweep at the first seed, then the best learning rate at the other seeds.
    stock_kids = {}
    for index, lr in enumerate(args.stock_lrs):
        print(f"training stock, lr {lr:g}, seed {seeds[0]} ...", flush=True)
        pipe, train_speed = train_stock(config, steps, device, learning_rate=lr, seed=seeds[0])
        if index == 0:
            stock_train, stock_sample = train_speed, sampling_throughput(pipe, device)
        stock_kids[lr] = [kid_table(pipe, real, extractor, sample_steps, num_samples, device, stock=True,
                                    grid=samples_dir / f"stock-lr{lr:g}-seed{seeds[0]}")]
        print(f"stock lr {lr:g} seed {seeds[0]}: " + json.dumps({s: round(r["kid"], 3) for s, r in stock_kids[lr][0].items()}),
              flush=True)
    best_lr = min(args.stock_lrs, key=lambda lr: min(r["kid"] for r in stock_kids[lr][0].values()))
    for seed in seeds[1:]:
        print(f"training stock, lr {best_lr:g}, seed {seed} ...", flush=True)
        pipe, _ = train_stock(config, steps, device, learning_rate=best_lr, seed=seed)
        stock_kids[best_lr].append(kid_table(pipe, real, extractor, sample_steps, num_samples, device, stock=True,
                                             grid=samples_dir / f"stock-lr{best_lr:g}-seed{seed}"))

    ours = {solver: mean_over_seeds(tables) for solver, tables in ours_kids.items()}
    stock = {lr: mean_over_seeds(tables) for lr, tables in stock_kids.items()}
    tuned_best_steps = min(sample_steps, key=lambda s: stock[best_lr][s]["kid"])
    tuned_best = stock[best_lr][tuned_best_steps]["kid"]
    best_solver = min(ours, key=lambda solver: ours[solver][10]["kid"]) if 10 in sample_steps else "dpm"
    shipped = stock.get(1e-4)

    def frac(images_per_s, flops_per):  # achieved FLOP/s over the measured peak
        return images_per_s * flops_per / peak

    result = {
        "machine": info, "device": device, "steps": steps, "batch_size": config.train_batch_size,
        "training_images": steps * config.train_batch_size, "seeds": seeds,
        "num_samples": num_samples, "features": name, "matmul_peak_flops": peak,
        "params": {"ours": ours_params, "stock": stock_params}, "flops_per_image": flops,
        "train_images_per_s": {"ours": ours_train, "stock": stock_train},
        "sample_images_per_s_20_steps_batch_256": {"ours": ours_sample, "stock": stock_sample},
        "fraction_of_peak": {
            "train": {"ours": frac(ours_train, flops["ours"]["train"]), "stock": frac(stock_train, flops["stock"]["train"])},
            "sample": {"ours": frac(ours_sample * 20, flops["ours"]["forward"]),
                       "stock": frac(stock_sample * 20, flops["stock"]["forward"])},
        },
        "kid": {
            "ours": {solver: {str(s): v for s, v in rows.items()} for solver, rows in ours.items()},
            "stock": {f"{lr:g}": {str(s): v for s, v in rows.items()} for lr, rows in stock.items()},
            "per_seed": {"ours": ours_kids, "stock": {f"{lr:g}": tables for lr, tables in stock_kids.items()}},
        },
        "stock_best_lr": best_lr,
    }
    if digits:
        result["real_held_out_recognised"] = extractor.held_out_recognised_fraction()
    if 10 in sample_steps:
        result["targets"] = {
            "train_speedup": ours_train / stock_train, "sample_speedup": ours_sample / stock_sample,
            "best_sampler": best_solver,
            "kid10_ours_best_over_stock_tuned_best": ours[best_solver][10]["kid"] / tuned_best,
            "stock_tuned_best_steps": tuned_best_steps,
        }
        if shipped is not None:
            result["targets"]["kid10_ours_best_over_stock_shipped_kid50"] = (
                ours[best_solver][10]["kid"] / shipped[max(sample_steps)]["kid"])
    out = Path(args.output) if args.output else RESULTS / f"run-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")

    lines = [f"Machine: {info['cpu']} ({info['cores']} cores){', ' + info['gpu'] if info['gpu'] else ''}, torch {info['torch']}, "
             f"device {device}; {steps} training steps, batch {config.train_batch_size}.", "",
             "| | ours | stock diffusers | ours / stock |", "| --- | ---: | ---: | ---: |",
             f"| parameters | {ours_params:,} | {stock_params:,} | {ours_params / stock_params:.2f} |",
             f"| forward GFLOP / image | {flops['ours']['forward'] / 1e9:.3f} | {flops['stock']['forward'] / 1e9:.3f} | "
             f"{flops['ours']['forward'] / flops['stock']['forward']:.2f} |",
             f"| training images/s | {ours_train:.1f} | {stock_train:.1f} | {ours_train / stock_train:.2f} |",
             f"| sampling images/s (20 steps, batch 256) | {ours_sample:.1f} | {stock_sample:.1f} | "
             f"{ours_sample / stock_sample:.2f} |",
             f"| training fraction of fp32 matmul peak | {result['fraction_of_peak']['train']['ours']:.1%} | "
             f"{result['fraction_of_peak']['train']['stock']:.1%} | |",
             f"| sampling fraction of fp32 matmul peak | {result['fraction_of_peak']['sample']['ours']:.1%} | "
             f"{result['fraction_of_peak']['sample']['stock']:.1%} | |", ""]

    def cell(row):
        text = f"{row['kid']:.2f} ± {row['kid_std']:.2f}"
        if row.get("kid_seed_spread") is not None:
            text += f" (seeds {row['kid_seed_spread']:.2f} apart)"
        if digits:
            text += f"; {row['recognised']:.1%}"
        return text

    lines.append("| model | seeds | " + " | ".join(f"{s} steps" for s in sample_steps) + " |")
    lines.append("| --- | ---: |" + " :--- |" * len(sample_steps))
    for solver, label in (("ddim", "ours, DDIM"), ("dpm", "ours, DPM-Solver++(2M)")):
        lines.append(f"| {label} | {len(seeds)} | " + " | ".join(cell(ours[solver][s]) for s in sample_steps) + " |")
    for lr in args.stock_lrs:
        label = f"stock, lr {lr:g}" + (" (as shipped)" if lr == 1e-4 else "") + (" (tuned: best)" if lr == best_lr else "")
        lines.append(f"| {label} | {len(stock_kids[lr])} | " + " | ".join(cell(stock[lr][s]) for s in sample_steps) + " |")
    lines.append("\nCells: KID ± its subset std" + ("; fraction recognised by the digits classifier with p >= 0.9 "
                 f"(real held-out digits: {result['real_held_out_recognised']:.1%})" if digits else "") + ".")
    if "targets" in result:
        t = result["targets"]
        lines.append(f"Measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s. Training {t['train_speedup']:.2f}x, sampling "
                     f"{t['sample_speedup']:.2f}x stock. Our best sampler at 10 steps ({best_solver}) over tuned stock's "
                     f"best KID (lr {best_lr:g}, {tuned_best_steps} steps): {t['kid10_ours_best_over_stock_tuned_best']:.3f} "
                     "(target <= 0.5).")
    print("\n".join(lines))
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
