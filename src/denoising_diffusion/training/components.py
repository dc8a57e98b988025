"""The model, scheduler and precision a training config describes, built the same way wherever they
are needed (the trainer, the sweep, the benchmarks)."""

import difflib
import inspect
import logging

import torch
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel

from ..hardware import cpu_has_native_bf16
from ..models.unet_continuous import ContinuousUNet2DModel
from ..pipelines.guidance import WITH_CLASS_LABELS
from ..schedulers.scheduling_cosine_ddim import CosineDDIMScheduler
from ..schedulers.scheduling_cosine_dpmsolver import CosineDPMSolverScheduler
from .config import CLASS_PRIOR_FROM_DATA, ConfigError, TrainingConfig

logger = logging.getLogger(__name__)


def build_ema(config: TrainingConfig, unet: ContinuousUNet2DModel) -> EMAModel:
    """diffusers' `EMAModel` of `unet`'s weights: decay up to `ema_decay`, never below `ema_min_decay`, warmed
    up as (1 + s) / (10 + s) at step s (EMAModel's default) or, with `ema_power`, 1 - (1 + s / ema_inv_gamma) **
    -ema_power."""
    return EMAModel(unet.parameters(), decay=config.ema_decay, min_decay=config.ema_min_decay,
                    use_ema_warmup=config.ema_power is not None, inv_gamma=config.ema_inv_gamma,
                    power=config.ema_power or 2 / 3, foreach=True, model_cls=ContinuousUNet2DModel,
                    model_config=unet.config)


def build_unet(config: TrainingConfig) -> ContinuousUNet2DModel:
    """A freshly initialised `ContinuousUNet2DModel` for the config's data, schedule and `unet` section."""
    known = (set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}) | {"patch_size", "position_channels"}
    unknown = sorted(set(config.unet) - known)
    if unknown:
        close = {key: difflib.get_close_matches(key, sorted(known), n=1) for key in unknown}
        hints = ", ".join(f"{key!r}" + (f" (did you mean {m[0]!r}?)" if m else "") for key, m in close.items())
        raise ConfigError(f"Unknown key(s) in the unet section: {hints}; it takes UNet2DModel's arguments "
                          "patch_size and position_channels.")
    section = dict(config.unet)
    if config.patch_fraction > 0:
        if section.get("position_channels") is False:
            raise ConfigError(f"patch_fraction={config.patch_fraction} trains on crops, which needs the UNet to know "
                              "where a crop lies: remove position_channels: false from the unet section.")
        section["position_channels"] = True
    try:
        unet = ContinuousUNet2DModel(
            sample_size=config.resolution, in_channels=config.channels, out_channels=config.channels,
            schedule=config.schedule, min_signal_rate=config.min_signal_rate, max_signal_rate=config.max_signal_rate,
            self_conditioning=config.self_conditioning, **section,
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"The unet section {config.unet} does not make a UNet: {error}") from error
    if config.resolution % unet.downsample_factor:
        raise ConfigError(
            f"resolution={config.resolution} is not divisible by {unet.downsample_factor}, the UNet's downsampling "
            f"factor (patch_size={unet.config.patch_size}, {len(config.unet['block_out_channels'])} levels); use a "
            f"multiple of {unet.downsample_factor}."
        )
    if config.patch_fraction > 0:
        check_crop_size(config, unet.downsample_factor)
    return unet


def check_crop_size(config: TrainingConfig, downsample_factor: int) -> None:
    """`patch_crop_size` (unset: half the resolution) below the resolution and a multiple of the UNet's
    `downsample_factor`."""
    size = config.resolution // 2 if config.patch_crop_size is None else config.patch_crop_size
    if not 1 <= size < config.resolution:
        raise ConfigError(f"patch_crop_size={size} is not valid; expected a crop side in [1, resolution="
                          f"{config.resolution}).")
    if size % downsample_factor:
        raise ConfigError(f"patch_crop_size={size} is not divisible by {downsample_factor}, the UNet's downsampling "
                          f"factor; use a multiple of {downsample_factor}.")


def build_scheduler(config: TrainingConfig) -> CosineDDIMScheduler:
    """The `CosineDDIMScheduler` with the config's schedule and `prediction_type`."""
    return CosineDDIMScheduler(
        schedule=config.schedule, min_signal_rate=config.min_signal_rate, max_signal_rate=config.max_signal_rate,
        prediction_type=config.prediction_type,
    )


def resolve_class_prior(sampling: dict | None, labels: torch.Tensor | None, num_classes: int | None,
                        streaming: bool = False) -> dict | None:
    """The config's `sampling` with `class_prior: dataset` replaced by the training labels' frequencies
    (`labels`: every training label, `num_classes` of them; a stream, whose labels are not known before
    training, gets equal weights, with a warning; `num_classes` None, an unconditional model as
    `label_column: auto` makes for images without classes, drops it)."""
    if not sampling:
        return sampling
    if num_classes is None:  # label_column: auto on images without classes: an unconditional model, no class settings
        return {k: v for k, v in sampling.items() if k not in ("class_prior", "guidance_scale", WITH_CLASS_LABELS)}
    if sampling.get("class_prior") != CLASS_PRIOR_FROM_DATA:
        return sampling
    if streaming or labels is None:
        logger.warning("sampling.class_prior='dataset': a stream's class frequencies are not known before training; "
                       "the saved pipeline draws its %d classes with equal probability.", num_classes)
        counts = [1.0] * num_classes
    else:
        counts = torch.bincount(labels.long().reshape(-1), minlength=num_classes).double().tolist()
    return {**sampling, "class_prior": [c / sum(counts) for c in counts]}


def sampling_components(sampling: dict | None, scheduler_config, guided: bool) -> tuple[CosineDDIMScheduler, dict]:
    """The saved pipeline's scheduler and `sampling_defaults` from a config's `sampling` mapping: the
    scheduler it names (`ddim` or `dpm_solver`, built from `scheduler_config`, with its `timestep_spacing`
    when given) and its other keys, without `autoguidance_scale` while there is no guide (`guided`) yet."""
    defaults = dict(sampling or {})
    scheduler_class = CosineDPMSolverScheduler if defaults.pop("scheduler", "ddim") == "dpm_solver" else CosineDDIMScheduler
    spacing = defaults.pop("timestep_spacing", None)
    if not guided:
        defaults.pop("autoguidance_scale", None)
        if defaults.get(WITH_CLASS_LABELS):
            defaults[WITH_CLASS_LABELS] = {k: v for k, v in defaults[WITH_CLASS_LABELS].items()
                                           if k != "autoguidance_scale"}
    scheduler = scheduler_class.from_config(scheduler_config, **({"timestep_spacing": spacing} if spacing else {}))
    return scheduler, defaults


def resolve_mixed_precision(value: str) -> str:
    """`mixed_precision` as Accelerate takes it: 'auto' becomes bf16 on a GPU that has it, fp16 on
    another GPU, bf16 on a CPU with AVX512-BF16 or AMX, and 'no' (fp32) on other CPUs, where bf16 is
    emulated (slow) and fp16 not applied."""
    if value == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision='fp16' needs a GPU: on a CPU Accelerate would train in fp32 all the same; "
                          "use 'bf16' (fast only with AVX512-BF16/AMX), 'auto' or 'no'.")
    if value == "bf16" and not torch.cuda.is_available() and not cpu_has_native_bf16():
        logger.warning(
            "mixed_precision='bf16' on a CPU without AVX512-BF16 or AMX: bf16 is emulated there and trains far "
            "slower than fp32 (18x on a 2-core AVX2 AMD EPYC, benchmarks/training_speed.py); 'auto' or 'no' "
            "trains in fp32 on this CPU.")
    if value != "auto":
        return value
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"
