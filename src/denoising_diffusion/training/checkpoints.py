"""Resumable checkpoints of a training run, and the output folder they live in.

A checkpoint `checkpoint-STEP` holds what Accelerate saves (model, optimiser, LR schedule, EMA and
torch's RNG states), the trainer's noise generator of each process (`noise_rng_P.pt`) and
`training_state.json` (training time, the position in the data, and the callbacks' state).

It is written to a temporary folder, renamed into place, and only then are old ones pruned
(`checkpoints_total_limit`), each renamed away before it is deleted: a kill at any moment leaves
`latest` a complete checkpoint.
"""

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

from .config import ConfigError, TrainingConfig

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Folders of interrupted saves and prunes (".checkpoint-STEP.partial", ".checkpoint-STEP.deleting").
UNFINISHED_CHECKPOINT = re.compile(r"^\.checkpoint-(\d+)\.(partial|deleting)$")
STATE_FILE = "training_state.json"
PIPELINE_FILE = "pipeline.json"  # what a pipeline needs besides the weights: configs, image statistics, names
EMA_FILE = "custom_checkpoint_0.pkl"  # Accelerate's file of the first registered object: the EMA
GUIDE_FILE = "guide_unet.safetensors"  # the autoguidance guide, once a run with guide=ema_snapshot has taken it


class DiskFullError(OSError):
    """The disk ran out while writing; the message says what was being written and what is kept."""


def disk_full(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is the disk running out: ENOSPC, or torch's serializer
    failing half-way through a file it could not finish."""
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error) or "unexpected pos" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def checkpoint_step(path: Path) -> int:
    """The STEP of a `checkpoint-STEP` folder."""
    return int(CHECKPOINT.match(Path(path).name).group(1))


def find_checkpoint(output_dir: Path, which: str) -> Path | None:
    """`which` is a checkpoint folder or 'latest' (the highest step in output_dir; None if there is none)."""
    if which != "latest":
        path = Path(which)
        if not path.is_absolute() and not path.exists():
            path = output_dir / which
        if not path.is_dir() or not CHECKPOINT.match(path.name):
            raise ConfigError(f"resume_from_checkpoint={which!r} is not a checkpoint-STEP folder.")
        return path
    steps = [int(m.group(1)) for p in output_dir.glob("checkpoint-*") if (m := CHECKPOINT.match(p.name)) and p.is_dir()]
    return output_dir / f"checkpoint-{max(steps)}" if steps else None


def resume_target(output_dir: Path, which: str | None) -> Path | None:
    """The checkpoint `resume_from_checkpoint` names, checked before anything is written: None to start
    anew. A finished run with no checkpoint is never trained over, and an incomplete folder is refused."""
    if not which:
        return None
    path = find_checkpoint(output_dir, which)
    if path is None:
        if (output_dir / "model_index.json").exists():
            raise ConfigError(
                f"resume_from_checkpoint={which!r}, but {str(output_dir)!r} holds a finished pipeline and no checkpoint: "
                "there is nothing to resume, and training anew would replace the model. Pass --overwrite_output_dir to "
                "train anew, or another output_dir."
            )
        return None
    if not any((path / name).exists() for name in ("model.safetensors", "pytorch_model.bin")):
        raise ConfigError(f"{path} is incomplete: it holds no model weights (model.safetensors); resume from "
                          "another checkpoint-STEP, or delete this folder.")
    return path


def check_checkpoint_fits(path: Path, unet_config) -> None:
    """Refuse a checkpoint of another model (other widths, channels, classes), naming what differs."""
    spec_file = path / PIPELINE_FILE
    if not spec_file.exists():
        return  # written before checkpoints recorded their model: Accelerate's loading checks the shapes
    saved = json.loads(spec_file.read_text())["unet"]
    keys = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "in_channels",
            "out_channels", "sample_size", "num_class_embeds", "norm_num_groups", "patch_size", "position_channels")
    differ = [k for k in keys if k in saved and _plain(saved[k]) != _plain(unet_config.get(k))]
    if differ:
        raise ConfigError(f"{path} is a checkpoint of another model: " + ", ".join(
            f"{k}={saved[k]!r} there, {_plain(unet_config.get(k))!r} in this config" for k in differ)
            + ". Resume with the settings it was trained with, or train anew in another output_dir.")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def check_output_dir(output_dir: Path, config: TrainingConfig) -> bool:
    """Refuse to train over an earlier run by accident; True when an earlier run is to be replaced
    (`overwrite_output_dir`)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {str(output_dir)!r} is a file, not a folder; choose another output_dir.")
    writable = next((p for p in (output_dir, *output_dir.resolve().parents) if p.exists()), None)
    if writable is not None and not os.access(writable, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {str(output_dir)!r} cannot be written ({writable} is read-only); choose another.")
    existing = output_dir.is_dir() and (
        (output_dir / "model_index.json").exists() or find_checkpoint(output_dir, "latest") is not None
    )
    if existing and not config.resume_from_checkpoint and not config.overwrite_output_dir:
        raise ConfigError(
            f"output_dir {str(output_dir)!r} already holds a trained pipeline or checkpoints; pass "
            "--resume_from_checkpoint latest to continue, --overwrite_output_dir to train anew, or another output_dir."
        )
    return existing and not config.resume_from_checkpoint


def remove_previous_run(output_dir: Path) -> None:
    """--overwrite_output_dir: the earlier run's checkpoints and sample grids go, so that a later
    `--resume_from_checkpoint latest` can only find this run's."""
    for path in output_dir.iterdir():
        if CHECKPOINT.match(path.name) or UNFINISHED_CHECKPOINT.match(path.name) or path.name == "samples":
            shutil.rmtree(path)


def remove_unfinished_checkpoints(output_dir: Path) -> None:
    """Folders left by a save or a prune that was killed half-way; never a resumable checkpoint."""
    for path in output_dir.glob(".checkpoint-*"):
        if UNFINISHED_CHECKPOINT.match(path.name):
            shutil.rmtree(path, ignore_errors=True)


class Checkpoints:
    """Saves, prunes and loads the checkpoints of one run in `output_dir` (every process calls
    `save` and `load`; only the main process touches the folders)."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, total_limit: int | None = None):
        self.accelerator, self.output_dir, self.total_limit = accelerator, Path(output_dir), total_limit

    def latest(self) -> Path | None:
        return find_checkpoint(self.output_dir, "latest")

    def save(self, step: int, generator: torch.Generator, state: dict, pipeline: dict | None = None) -> Path:
        """Write `checkpoint-STEP` through a temporary folder, rename it into place, then prune.

        `state` (JSON-ready: training time, data position, callbacks' state) goes into
        `training_state.json`, and `pipeline` (what `export_pipeline` needs besides the weights) into
        `pipeline.json`. The new checkpoint takes its name only once complete, and old ones are
        pruned only after that.
        """
        partial = self.output_dir / f".checkpoint-{step}.partial"
        try:
            return self._save(step, generator, state, pipeline, partial)
        except Exception as error:  # noqa: BLE001 - safetensors' and torch's write errors are no OSError
            if not disk_full(error):
                raise
            shutil.rmtree(partial, ignore_errors=True)  # give back what the half-written checkpoint took
            latest = self.latest()
            raise DiskFullError(
                errno.ENOSPC,
                f"The disk holding {self.output_dir} is full (no space left) while writing checkpoint-{step}; it was "
                f"not kept. {'The last complete checkpoint, ' + str(latest) + ', is kept: free space and resume with --resume_from_checkpoint latest.' if latest else 'No checkpoint was written before it.'}",
            ) from error

    def _save(self, step: int, generator: torch.Generator, state: dict, pipeline: dict | None, partial: Path) -> Path:
        accelerator = self.accelerator
        final = self.output_dir / f"checkpoint-{step}"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        torch.save(generator.get_state(), partial / f"noise_rng_{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            (partial / STATE_FILE).write_text(json.dumps(state))
            if pipeline is not None:
                (partial / PIPELINE_FILE).write_text(json.dumps(pipeline, indent=2))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            if self.total_limit is not None:
                self.prune(self.total_limit)
        accelerator.wait_for_everyone()
        return final

    def save_pipeline(self, pipe, step: int) -> None:
        """The trained pipeline into `output_dir`; a full disk is reported with what is kept."""
        try:
            pipe.save_pretrained(self.output_dir)
        except Exception as error:  # noqa: BLE001 - safetensors' and torch's write errors are no OSError
            if not disk_full(error):
                raise
            latest = self.latest()
            kept = (f"The last checkpoint, {latest}, is kept: free space, then resume with --resume_from_checkpoint "
                    "latest (it saves the pipeline) or export it (python -m denoising_diffusion.hub export)."
                    if latest else "No checkpoint was written before it: the trained weights are lost; set "
                    "checkpointing_steps below max_train_steps to keep some.")
            raise DiskFullError(errno.ENOSPC, f"The disk holding {self.output_dir} is full (no space left) while "
                                              f"saving the trained pipeline after step {step}. {kept}") from error

    def prune(self, limit: int) -> None:
        """Keep the newest `limit` checkpoints; each older one is renamed away, then deleted."""
        kept = sorted((int(m.group(1)), p) for p in self.output_dir.glob("checkpoint-*") if (m := CHECKPOINT.match(p.name)))
        for step, old in kept[: max(0, len(kept) - limit)]:
            doomed = self.output_dir / f".checkpoint-{step}.deleting"
            os.replace(old, doomed)  # atomic: a half-deleted folder never keeps a checkpoint name
            shutil.rmtree(doomed)

    def load(self, path: Path, generator: torch.Generator) -> dict:
        """Restore what `save` wrote (into the prepared objects and `generator`); return its state
        (empty for checkpoints written before it was stored)."""
        self.accelerator.load_state(str(path))
        generator.set_state(torch.load(path / f"noise_rng_{self.accelerator.process_index}.pt"))
        state_file = path / STATE_FILE
        return json.loads(state_file.read_text()) if state_file.exists() else {}


def export_pipeline(checkpoint: str | Path, output_dir: str | Path, ema_weights: bool = True) -> Path:
    """Turn `checkpoint-STEP` into a saved pipeline in `output_dir` (with the EMA weights when the run
    kept them), loadable like a finished run's; the run's `training_config.yaml` comes along, so
    `python -m denoising_diffusion.hub card/push` work on it."""
    from safetensors.torch import load_file

    from ..models.unet_continuous import ContinuousUNet2DModel
    from ..pipelines.pipeline_cosine_ddim import CosineDDIMPipeline
    from .components import sampling_components

    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if not checkpoint.is_dir() or not CHECKPOINT.match(checkpoint.name):
        raise ConfigError(f"{str(checkpoint)!r} is not a checkpoint-STEP folder.")
    if not (checkpoint / PIPELINE_FILE).exists():
        raise ConfigError(f"{checkpoint} has no {PIPELINE_FILE}: it was written by a version that did not record the "
                          "pipeline's settings, so it cannot be exported; resume it for a step and export the new one.")
    spec = json.loads((checkpoint / PIPELINE_FILE).read_text())
    unet = ContinuousUNet2DModel.from_config(spec["unet"])
    unet.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
    if ema_weights and (checkpoint / EMA_FILE).exists():
        shadow = torch.load(checkpoint / EMA_FILE, weights_only=True)["shadow_params"]
        with torch.no_grad():
            for parameter, value in zip(unet.parameters(), shadow, strict=True):
                parameter.copy_(value)
    guide = None
    if (checkpoint / GUIDE_FILE).exists():
        guide = ContinuousUNet2DModel.from_config(spec["unet"])
        guide.load_state_dict(load_file(str(checkpoint / GUIDE_FILE)))
        guide.eval()
    scheduler, sampling = sampling_components(spec.get("sampling"), spec["scheduler"], guide is not None)
    pipe = CosineDDIMPipeline(unet.eval(), scheduler,
                              image_mean=spec["image_mean"], image_std=spec["image_std"],
                              distilled_steps=spec.get("distilled_steps"), class_names=spec.get("class_names"),
                              guide_unet=guide, guide_info=None if guide is None else spec.get("guide_info"),
                              sampling_defaults=sampling)
    pipe.save_pretrained(output_dir)
    run_config = checkpoint.parent / "training_config.yaml"
    if run_config.exists() and run_config.resolve() != (output_dir / "training_config.yaml").resolve():
        shutil.copyfile(run_config, output_dir / "training_config.yaml")
    state_file = checkpoint / STATE_FILE
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    summary = {"global_step": checkpoint_step(checkpoint), "exported_from": checkpoint.name,
               "num_parameters": sum(p.numel() for p in unet.parameters()), **spec.get("summary", {})}
    if "training_seconds" in state:
        summary["training_seconds"] = round(state["training_seconds"], 1)
    (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return output_dir
