"""The fast subset of the fault-injection suite (tests/fault_injection.py, the long version with random
plans: `python tests/fault_injection.py`). Each case trains in a subprocess that is SIGKILLed at
fixed points (inside `save_state`, between the temporary folder and its rename, half-way through a
prune) and once at a random moment, resumed with `--resume_from_checkpoint latest` each time, and
must end bit-identical to an uninterrupted run."""

import contextlib
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fault_injection import TRAIN, child_env, make_data, run_case, weights

PLANS = {
    "defaults": ["save_state@2", "rename@1", "random"],
    "random_crops_2_workers": ["save_state@1", "rename@2"],
    "dropout": ["rename@1", "save_state@4"],
    "grad_accumulation_2": ["save_state@2", "rename@2"],
    "streaming": ["rename@1", "save_state@3"],
    "checkpoint_limit_1": ["prune@1", "save_state@2", "rename@3"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("fault_data"))


@pytest.mark.parametrize("case", list(PLANS))
def test_killed_and_resumed_training_ends_bit_identical(case, data, tmp_path):
    random.seed(0)
    result = run_case(case, PLANS[case], tmp_path, data)
    print(f"{case}: survived {result['kills']} kills in {result['launches']} launches")
    planned = sum(kill != "random" for kill in PLANS[case])
    assert result["kills"] >= planned, result  # every planned kill point was reached
    assert result["identical"], result


ROOT = Path(__file__).resolve().parents[1]


def train_process(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train_ddim.py"), *TRAIN, *args], capture_output=True, text=True,
                          env=child_env(), timeout=600)


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A size-limited folder: a tmpfs mounted at `path` (needs root, as CI runs)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Take all the free space of `disk` but `leave` bytes."""
    free = shutil.disk_usage(disk).free
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_is_reported_with_what_was_kept_and_the_run_resumes_bit_identically(tmp_path):
    straight = train_process(["--max_train_steps", "4", "--checkpointing_steps", "1", "--output_dir",
                              str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-3000:]
    with small_disk(tmp_path / "disk", "16m") as disk:
        out = disk / "run"
        first = train_process(["--max_train_steps", "2", "--checkpointing_steps", "1", "--output_dir", str(out)])
        assert first.returncode == 0, first.stderr[-3000:]
        filler = fill(disk, leave=4096)
        full = train_process(["--max_train_steps", "4", "--checkpointing_steps", "1", "--output_dir", str(out),
                              "--resume_from_checkpoint", "latest"])
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
        assert "is full (no space left) while writing checkpoint-3; it was not kept" in full.stderr
        assert f"The last complete checkpoint, {out / 'checkpoint-2'}, is kept" in full.stderr
        assert not list(out.glob(".checkpoint-*")) and (out / "checkpoint-2" / "model.safetensors").exists()
        filler.unlink()  # space again: the run goes on from checkpoint-2
        resumed = train_process(["--max_train_steps", "4", "--checkpointing_steps", "1", "--output_dir", str(out),
                                 "--resume_from_checkpoint", "latest"])
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        a, b = weights(tmp_path / "straight"), weights(out)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

        lost = disk / "no-checkpoint"
        filler = fill(disk, leave=4096)
        final = train_process(["--max_train_steps", "1", "--checkpointing_steps", "500", "--output_dir", str(lost)])
        assert final.returncode == 1 and "Traceback" not in final.stderr, final.stderr[-3000:]
        assert "is full (no space left) while saving the trained pipeline after step 1" in final.stderr
        assert "No checkpoint was written before it: the trained weights are lost" in final.stderr


def test_resuming_a_finished_run_in_a_new_process_refuses_and_keeps_the_model(tmp_path):
    out = tmp_path / "run"
    finished = train_process(["--max_train_steps", "2", "--checkpointing_steps", "500", "--output_dir", str(out)])
    assert finished.returncode == 0, finished.stderr[-3000:]
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    again = train_process(["--max_train_steps", "4", "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "holds a finished pipeline and no checkpoint: there is nothing to resume" in again.stderr
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
