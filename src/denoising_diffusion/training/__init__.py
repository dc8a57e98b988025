"""Training: configuration, data and the Accelerate loop behind `train_ddim.py`."""

import sys

from .config import ConfigError, TrainingConfig, parse_config
from .trainer import Trainer, train

__all__ = ["ConfigError", "Trainer", "TrainingConfig", "main", "parse_config", "train"]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: `train_ddim.py [--config FILE.yaml] [--key value ...]`."""
    from ..hub import PushError

    try:
        config = parse_config(argv)
        output_dir = train(config)
    except (ConfigError, PushError) as error:
        sys.exit(f"error: {error}")
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"Saved the trained pipeline to {output_dir}")
