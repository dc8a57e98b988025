"""`TrainingConfig` from a YAML file and `--key value` command-line arguments (later wins), with every
unknown key named (and the nearest known one suggested)."""

import dataclasses
import difflib
import json
import sys
from pathlib import Path

import yaml

from .config import ConfigError, TrainingConfig


def _merge_unet_override(args: list[str], base: dict) -> list[str]:
    """`--unet '{...}'` on the command line updates the config file's `unet` section key by key (new widths
    alone also drop the file's block types, which then follow the new number of levels)."""
    args = list(args)
    for i, arg in enumerate(args):
        value = None
        if arg == "--unet" and i + 1 < len(args):
            value, where = args[i + 1], i + 1
        elif arg.startswith("--unet="):
            value, where = arg.split("=", 1)[1], i
        if value is None:
            continue
        try:
            given = json.loads(value)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--unet {value!r} is not a JSON mapping: {error}") from error
        if not isinstance(given, dict):
            raise ConfigError(f"--unet {value!r} is not a JSON mapping of UNet arguments.")
        merged = dict(base)
        if "block_out_channels" in given and len(given["block_out_channels"]) != len(base.get("block_out_channels", [])):
            for key in ("down_block_types", "up_block_types"):
                if key not in given:
                    merged.pop(key, None)
        merged.update(given)
        merged = json.dumps(merged)
        args[where] = merged if arg == "--unet" else f"--unet={merged}"
    return args


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainingConfig)]


def _unknown_key_error(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, _field_names(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"Unknown config key {key!r} in {where}.{hint}")


def parse_config(argv: list[str] | None = None) -> TrainingConfig:
    """Build a `TrainingConfig` from `[--config FILE.yaml] [--key value ...]` (later wins)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(TrainingConfig, description="Train a continuous-time DDIM with Accelerate.")
    parser.add_argument("--config", type=str, default=None, help="YAML file with config keys.")
    args = list(argv) if argv is not None else sys.argv[1:]
    known, _ = parser.parse_known_args(args)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist.")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {error}") from error
        if not isinstance(values, dict):
            raise ConfigError(f"Config file {str(path)!r} must hold a mapping of keys to values.")
        for key in values:
            if key not in _field_names():
                raise _unknown_key_error(key, str(path))
        parser.set_defaults(**values)
        if isinstance(values.get("unet"), dict):
            args = _merge_unet_override(args, values["unet"])
    outputs = parser.parse_args_into_dataclasses(args, return_remaining_strings=True)
    config, remaining = outputs[0], outputs[-1]  # between them: a namespace holding --config
    flags = [r for r in remaining if r.startswith("--")]
    if flags:
        raise _unknown_key_error(flags[0].lstrip("-").split("=")[0], "the command line")
    if remaining:
        raise ConfigError(f"Unexpected command-line values {remaining}; use --key value.")
    return config
