"""The model, scheduler and precision a training config describes, built the same way wherever they
are needed (the trainer, the sweep, the benchmarks)."""

import torch

from ..models.unet_continuous import ContinuousUNet2DModel
from ..schedulers.scheduling_cosine_ddim import CosineDDIMScheduler
from .config import ConfigError, TrainingConfig


def build_unet(config: TrainingConfig) -> ContinuousUNet2DModel:
    """A freshly initialised `ContinuousUNet2DModel` for the config's data, schedule and `unet` section."""
    unet = ContinuousUNet2DModel(
        sample_size=config.resolution, in_channels=config.channels, out_channels=config.channels,
        schedule=config.schedule, min_signal_rate=config.min_signal_rate, max_signal_rate=config.max_signal_rate,
        **config.unet,
    )
    if config.resolution % unet.downsample_factor:
        raise ConfigError(
            f"resolution={config.resolution} is not divisible by {unet.downsample_factor}, the UNet's downsampling "
            f"factor ({len(config.unet['block_out_channels'])} levels); use a multiple of {unet.downsample_factor}."
        )
    return unet


def build_scheduler(config: TrainingConfig) -> CosineDDIMScheduler:
    """The `CosineDDIMScheduler` with the config's schedule and `prediction_type`."""
    return CosineDDIMScheduler(
        schedule=config.schedule, min_signal_rate=config.min_signal_rate, max_signal_rate=config.max_signal_rate,
        prediction_type=config.prediction_type,
    )


def resolve_mixed_precision(value: str) -> str:
    """`mixed_precision` as Accelerate takes it: 'auto' becomes bf16 on a GPU that has it, fp16 on
    another GPU, and 'no' (fp32) on a CPU, where half precision is emulated or not applied."""
    if value != "auto":
        return value
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"
