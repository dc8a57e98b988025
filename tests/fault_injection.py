"""Fault injection: train in a subprocess, SIGKILL it at chosen or random moments, resume each time
with `--resume_from_checkpoint latest`, and require the final weights to be bit-identical
(`torch.equal`) to an uninterrupted run's.

    python tests/fault_injection.py                    # every case, 12 kills each, 60 steps (about 20 minutes)
    python tests/fault_injection.py --kills 30 --cases defaults,streaming --seed 1

Kill moments ("POINT@N": the N-th time this launch reaches POINT):
  save_state@N   inside `Accelerator.save_state`, right after its N-th file is written
  rename@N       between the complete temporary folder and its rename to checkpoint-STEP
  prune@N        half-way through deleting an old checkpoint (`checkpoints_total_limit`)
  random         at a random moment of the training loop, from outside (uniform over the first
                 third of the expected time left, measured on the uninterrupted run)
The fast subset in tests/test_fault_injection.py runs a fixed plan per case.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

HERE = Path(__file__).resolve().parent
TRAIN = ["--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "40", "--logger", "none",
         "--unet", '{"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}',
         "--num_grid_images", "4", "--grid_inference_steps", "2", "--logging_steps", "1",
         "--checkpointing_steps", "2", "--save_images_steps", "3"]


def case_args(case: str, data: Path) -> list[str]:
    """Training arguments of each case (each on top of TRAIN)."""
    return {
        "defaults": [],
        "random_crops_2_workers": ["--train_data_dir", str(data / "images"), "--channels", "3", "--no_center_crop",
                                   "--random_flip", "--dataloader_num_workers", "2"],
        "dropout": ["--unet", '{"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, '
                              '"dropout": 0.1}'],
        "grad_accumulation_2": ["--gradient_accumulation_steps", "2"],
        "streaming": ["--dataset_name", str(data / "parquet"), "--image_column", "img", "--streaming",
                      "--no_center_crop"],
        "checkpoint_limit_1": ["--checkpoints_total_limit", "1", "--checkpointing_steps", "1"],
    }[case]


CASES = ["defaults", "random_crops_2_workers", "dropout", "grad_accumulation_2", "streaming", "checkpoint_limit_1"]


def make_data(folder: Path) -> Path:
    """Small real files: 24 RGB PNGs of uneven sizes (random crops) and a 24-row parquet dataset (streaming)."""
    if (folder / "done").exists():
        return folder
    from datasets import Dataset, Features, Image, Value

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(24):
        PIL.Image.fromarray(rng.integers(0, 255, (11, 14, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
    images = [PIL.Image.fromarray(rng.integers(0, 255, (10, 9), dtype=np.uint8), mode="L") for _ in range(24)]
    (folder / "parquet").mkdir(exist_ok=True)
    Dataset.from_dict({"img": images, "n": list(range(24))}, features=Features({"img": Image(), "n": Value("int64")})
                      ).to_parquet(str(folder / "parquet" / "train.parquet"))
    (folder / "done").write_text("")
    return folder


# ------------------------------------------------------------------ the child: training with kill points
def child(point: str, after: int, train_args: list[str]) -> None:
    import accelerate.checkpointing as checkpointing

    from denoising_diffusion.training import Callback, checkpoints, main

    seen = {"n": 0}

    def reached(name):
        if name == point:
            seen["n"] += 1
            if seen["n"] == after:
                os.kill(os.getpid(), signal.SIGKILL)

    save = checkpointing.save

    def counting_save(*args, **kwargs):
        save(*args, **kwargs)
        reached("save_state")

    checkpointing.save = counting_save
    replace, rmtree = os.replace, shutil.rmtree

    def watched_replace(src, dst, *args, **kwargs):
        if str(src).endswith(".partial"):
            reached("rename")
        return replace(src, dst, *args, **kwargs)

    def watched_rmtree(path, *args, **kwargs):
        if str(path).endswith(".deleting") and point == "prune":
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            for f in files[: len(files) // 2]:  # half deleted, then the kill
                f.unlink()
            reached("prune")
        return rmtree(path, *args, **kwargs)

    checkpoints.os.replace = watched_replace
    checkpoints.shutil.rmtree = watched_rmtree

    class LoopMarkers(Callback):
        """FAULT_MARKER when the training loop starts, FAULT_MARKER.end when its last step is done."""

        def on_train_begin(self, trainer, step):
            if os.environ.get("FAULT_MARKER"):
                Path(os.environ["FAULT_MARKER"]).write_text(str(time.time()))

        def on_step_end(self, trainer, step):
            if os.environ.get("FAULT_MARKER") and step == trainer.max_train_steps:
                Path(os.environ["FAULT_MARKER"] + ".end").write_text(str(time.time()))

    main(train_args, callbacks=[LoopMarkers()])


# ------------------------------------------------------------------ the parent
def launch(args: list[str], kill: str | None, env: dict, marker: Path, timeout: float = 600) -> tuple[int, float]:
    """Run one training launch; `kill` is "POINT@N", "random:SECONDS" (after the training loop
    starts) or None. Returns (exit code, seconds the training loop took, when it ran to its end)."""
    point, after, delay = "none", 0, None
    if kill and kill.startswith("random:"):
        delay = float(kill.split(":")[1])
    elif kill:
        point, after = kill.split("@")[0], int(kill.split("@")[1])
    end_marker = Path(str(marker) + ".end")
    marker.unlink(missing_ok=True)
    end_marker.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", point, str(after), *args]
    proc = subprocess.Popen(cmd, env={**env, "FAULT_MARKER": str(marker)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while delay is not None and proc.poll() is None and not marker.exists() and time.time() < deadline:
        time.sleep(0.02)
    try:
        out, _ = proc.communicate(timeout=delay if delay is not None else timeout)
    except subprocess.TimeoutExpired:
        if delay is None:
            proc.kill()
            raise
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"training failed (exit {proc.returncode}) with kill {kill}:\n{out[-4000:]}")
    loop = float(end_marker.read_text()) - float(marker.read_text()) if end_marker.exists() else 0.0
    return proc.returncode, loop


def child_env() -> dict:
    # One thread everywhere: the same arithmetic in every launch (and quiet bars).
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def run_case(case: str, plan: list[str], workdir: Path, data: Path, steps: int = 10) -> dict:
    """Train `case` for `steps` optimiser steps straight and under `plan` (a kill spec per launch,
    resuming after each), then compare the final weights and the last checkpoint's.

    Returns {"case", "kills" (launches that were killed), "launches", "identical"}. A launch that
    finishes before its kill point ends the plan.
    """
    import torch

    env = child_env()
    args = TRAIN + ["--max_train_steps", str(steps)] + case_args(case, data)
    reference = workdir / f"{case}-straight"
    shutil.rmtree(reference, ignore_errors=True)
    marker = workdir / f"{case}.started"
    _, train_seconds = launch(args + ["--output_dir", str(reference)], None, env, marker)
    seconds_per_step = train_seconds / steps
    out = workdir / f"{case}-killed"
    shutil.rmtree(out, ignore_errors=True)
    resumed = args + ["--output_dir", str(out), "--resume_from_checkpoint", "latest"]
    kills = launches = 0
    for kill in plan:
        if kill == "random":  # anywhere in the first third of the training that is left (so plans last)
            done = max([int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")], default=0)
            kill = f"random:{random.uniform(0.0, 1.0) * (steps - done) * seconds_per_step / 3:.2f}"
        code, _ = launch(resumed, kill, env, marker)
        launches += 1
        if code == 0:
            break  # finished before the kill point came
        kills += 1
    if not (out / "model_index.json").exists() or launches == len(plan):
        code, _ = launch(resumed, None, env, marker)
        launches += 1
    a, b = weights(reference), weights(out)
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    ca, cb = (load_model(folder / f"checkpoint-{last}") for folder in (reference, out))
    identical = identical and ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    return {"case": case, "kills": kills, "launches": launches, "identical": identical}


def load_model(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def random_plan(rng: random.Random, kills: int, case: str) -> list[str]:
    points = ["random", "random", "random", "save_state@1", "save_state@3", "rename@1", "rename@2", "rename@4"]
    if case == "checkpoint_limit_1":
        points += ["prune@1", "prune@2"]
    return [rng.choice(points) for _ in range(kills)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=12, help="kills per case")
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps per case (a checkpoint every 2)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="default: a fresh temporary folder")
    args = parser.parse_args(argv)
    import tempfile

    rng = random.Random(args.seed)
    random.seed(args.seed)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fault_injection_"))
    data = make_data(workdir / "data")
    failures = 0
    for case in args.cases.split(","):
        plan = random_plan(rng, args.kills, case)
        start = time.perf_counter()
        result = run_case(case, plan, workdir, data, steps=args.steps)
        failures += not result["identical"]
        print(f"{case:24s} survived {result['kills']:3d} kills in {result['launches']:3d} launches: final weights "
              f"{'bit-identical' if result['identical'] else 'DIFFERENT'} to the uninterrupted run "
              f"({time.perf_counter() - start:.0f} s; plan {' '.join(plan)})", flush=True)
    print("OK" if not failures else f"FAILED: {failures} case(s) differ")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        sys.exit(main())
