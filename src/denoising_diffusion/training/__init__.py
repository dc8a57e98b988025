"""Training: configuration, data and the Accelerate loop behind `train_ddim.py`.

    config.py       TrainingConfig: every option, from YAML and `--key value`
    data.py         any image source -> `TrainingImages` (checked, decoded once or on access)
    decoding.py     opening and checking images and labels, conversion to the training size
    components.py   the UNet and scheduler a config describes
    objectives.py   what the loop minimises (the diffusion loss)
    distillation.py progressive distillation: the two-step target and its objective
    checkpoints.py  resumable checkpoints (temporary folder + rename, pruning) and the output folder
    monitor.py      running losses and the non-finite check
    callbacks.py    periodic work: sample grids, KID, Hub pushes, throughput
    trainer.py      Trainer: builds everything in __init__; train() is the loop
    rounds.py       progressive distillation, round after round
"""

import sys
from pathlib import Path

from ..pipelines.pipeline_saving import PushError
from .callbacks import Callback
from .checkpoints import DiskFullError
from .arguments import parse_config
from .config import ConfigError, TrainingConfig
from .rounds import distill
from .trainer import Trainer

__all__ = ["Callback", "ConfigError", "Trainer", "TrainingConfig", "main", "parse_config", "train"]


def train(config: TrainingConfig, objective=None, callbacks: list[Callback] = ()) -> Path:
    """Train as `config` says and return the folder holding the saved pipeline (with a teacher: the
    last distillation round's student). `objective` and `callbacks` go to `Trainer`; with a teacher,
    `callbacks` go to every round (whose objective is the distillation one)."""
    if config.teacher:
        if objective is not None:
            raise ValueError("With a teacher every round's objective is the distillation one; pass no objective.")
        return distill(config, callbacks)
    return Trainer(config, objective=objective, callbacks=callbacks).train()


def main(argv: list[str] | None = None, callbacks: list[Callback] = ()) -> None:
    """Command-line entry point: `train_ddim.py [--config FILE.yaml] [--key value ...]`; `callbacks`
    are handed to the trainer (for programs that wrap the command)."""
    try:
        config = parse_config(argv)
        output_dir = train(config, callbacks=callbacks)
    except (ConfigError, PushError, DiskFullError) as error:
        sys.exit(f"error: {error}")
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"Saved the trained pipeline to {output_dir}")
