"""Training configuration: one dataclass of every option, each checked when it is built (`arguments`
fills it from a YAML file and `--key value` overrides).

Names follow diffusers' example scripts (`train_unconditional.py`) where they exist.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..models.compile import check_compile_options
from ..pipelines.guidance import WITH_CLASS_LABELS, check_sampling_defaults
from ..schedulers.noise_schedule import SPACINGS

CLASS_PRIOR_FROM_DATA = "dataset"  # sampling.class_prior: the training labels' frequencies, counted by the trainer

LOSSES = ("mae", "mse")
LOSS_TARGETS = ("noise", "image", "velocity")
NORMALIZATIONS = ("minus_one_one", "dataset")
MIXED_PRECISIONS = ("no", "fp16", "bf16", "auto")
# diffusers.optimization's schedules (piecewise_constant needs a rule this config cannot give)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
BUILTIN_DATASET = "digits"
TIME_DISTRIBUTIONS = ("uniform", "log_normal")
GUIDES = ("ema_snapshot",)
SAMPLERS = ("ddim", "dpm_solver")
SECRET_FIELDS = ("hub_token",)


class ConfigError(ValueError):
    """A problem with the user's configuration or data, reported before training starts."""

# The built-in default's UNet: the residual design of the Keras DDIM example (two blocks per level, no
# attention), three levels 32/64/96 for 16x16 digits. configs/flowers.yaml has its 64x64 four-level one.
DEFAULT_UNET = {
    "block_out_channels": [32, 64, 96],
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "mid_block_type": None,
    "norm_num_groups": 8,
}


@dataclass
class TrainingConfig:
    """Everything `train_ddim.py` reads. Every field can be set in the YAML file or as `--name value`."""

    # -- data
    dataset_name: Optional[str] = field(default=BUILTIN_DATASET, metadata={
        "help": "Hub dataset id, local dataset folder/file, or 'digits' (scikit-learn's 8x8 digits, built in)."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    train_data_dir: Optional[str] = field(
        default=None, metadata={"help": "A folder of images (imagefolder); used instead of dataset_name."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: Optional[str] = field(
        default=None,
        metadata={"help": "Column holding class labels: trains a class-conditional model (unet.num_class_embeds is "
                          "inferred: classes + 1 for 'no class'). 'auto': the 'label' column of an image folder "
                          "with class subfolders, if it has one."},
    )
    class_names: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Names of the classes 0..N-1, stored in the pipeline (default: the label column's "
                          "ClassLabel names, e.g. an image folder's subfolder names)."},
    )
    resolution: int = field(default=16, metadata={"help": "Images are resized (and cropped) to this square size."})
    center_crop: bool = field(
        default=True, metadata={"help": "Center-crop after resizing (as the Keras DDIM example; images decoded once) or random crop."})
    random_flip: bool = field(default=False, metadata={"help": "Flip images horizontally at random."})
    channels: int = field(default=1, metadata={"help": "1 (grayscale) or 3 (RGB); images are converted."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N examples."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it first."})
    normalization: str = field(
        default="dataset",
        metadata={"help": "'dataset': standardise with per-channel mean/std (Keras DDIM example); 'minus_one_one': [-1, 1]."},
    )
    normalization_samples: int = field(
        default=10000, metadata={"help": "How many images estimate the dataset statistics (streaming)."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    # -- model and objective
    unet: Union[dict, str, None] = field(
        default=None, metadata={"help": "ContinuousUNet2DModel arguments as a mapping (YAML) or JSON string."})
    schedule: str = field(default="cosine", metadata={"help": "'cosine' or 'linear'."})
    min_signal_rate: float = field(default=0.02, metadata={"help": "Signal rate at t=1."})
    max_signal_rate: float = field(default=0.95, metadata={"help": "Signal rate at t=0."})
    prediction_type: str = field(default="epsilon", metadata={"help": "'epsilon', 'sample' or 'v_prediction'."})
    loss: str = field(default="mae", metadata={"help": "'mae' or 'mse'."})
    loss_on: str = field(default="noise", metadata={"help": "'noise', 'image' or 'velocity'."})
    snr_gamma: Optional[float] = field(
        default=None, metadata={"help": "Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5.0; off by default."})
    self_conditioning: bool = field(
        default=False,
        metadata={"help": "Self-conditioning (Chen et al. 2022): the UNet also takes its own previous clean-image "
                          "estimate (in training, in half of the batches, from an extra forward pass without gradient)."},
    )
    patch_fraction: float = field(default=0.0, metadata={"help": "Patch Diffusion (Wang et al. 2023): the fraction "
        "of batches, in [0, 1), that train on random crops of every image (the UNet gets position_channels)."})
    patch_crop_size: Optional[int] = field(default=None, metadata={"help": "patch_fraction > 0: the crops' side, "
        "below resolution and a multiple of the UNet's downsampling factor (default: resolution // 2)."})
    cond_drop_prob: float = field(
        default=0.1, metadata={"help": "Class-conditional models: chance a label is replaced by 'no class' (CFG)."})
    class_balance: float = field(default=0.0, metadata={"help": (
        "Class-conditional models: draw training examples so that a class with n examples comes up in proportion "
        "to n ** (1 - class_balance): 0 keeps the data's frequencies, 1 trains on every class equally often.")})
    time_distribution: str = field(
        default="uniform",
        metadata={"help": "How training draws noise levels: 'uniform' in time t (the Keras DDIM example), or "
                          "'log_normal': ln(sigma / alpha) ~ N(p_mean, p_std^2) (EDM, Karras et al. 2022), truncated "
                          "to the schedule's [min_signal_rate, max_signal_rate]."},
    )
    p_mean: float = field(
        default=-0.5,
        metadata={"help": "time_distribution='log_normal': mean of ln(sigma / alpha). EDM's -1.2 is for data of std "
                          "0.5; for data standardised to std 1 (normalization='dataset') the same levels are -1.2 + ln 2."},
    )
    p_std: float = field(default=1.2, metadata={"help": "time_distribution='log_normal': std of ln(sigma / alpha)."})

    # -- progressive distillation (Salimans & Ho 2022)
    teacher: Optional[str] = field(
        default=None,
        metadata={"help": "A saved pipeline (folder or Hub id) to distill: the student starts from its weights and "
                          "learns to match two of its DDIM steps in one. The student keeps the teacher's UNet, "
                          "schedule and image statistics; unet/schedule keys of this config are not used."},
    )
    distill_steps: Optional[list[int]] = field(
        default=None,
        metadata={"help": "The students' step counts, one distillation round each, halving: e.g. 32 16 8 4 2 1 "
                          "(round 1 matches the teacher at 64 steps). Each round trains max_train_steps (or "
                          "num_epochs) and is saved in output_dir/student-N-steps."},
    )

    # -- autoguidance (Karras et al. 2024) and how the saved pipeline samples
    guide: Optional[str] = field(
        default=None,
        metadata={"help": "Make an autoguidance guide in the same run: 'ema_snapshot' keeps the EMA weights at "
                          "guide_fraction of the run as the pipeline's guide_unet (no extra training; the checkpoints "
                          "and the saved pipeline carry one more copy of the weights)."},
    )
    guide_fraction: float = field(
        default=0.25, metadata={"help": "guide='ema_snapshot': when to take it, as a fraction of the run's steps."})
    sampling: Union[dict, str, None] = field(
        default=None,
        metadata={"help": "The saved pipeline's sampling defaults, as a mapping (YAML) or JSON string: scheduler "
                          "('ddim' or 'dpm_solver'), timestep_spacing (the saved scheduler's: 'log_snr' by default, "
                          "'time' or 'karras'), num_inference_steps, autoguidance_scale (needs guide) and "
                          "guidance_interval [sigma_lo, sigma_hi] (sigma = sigma_t / alpha_t; null: no upper bound); "
                          "for a class-conditional model (label_column) guidance_scale (classifier-free guidance "
                          "with class labels) and class_prior ('dataset': the training labels' frequencies, or one "
                          "weight per class): pipe() without class_labels then draws them from it; with_class_labels (a "
                          "mapping of num_inference_steps, autoguidance_scale, guidance_interval, guidance_scale): "
                          "the defaults of pipe(class_labels=...) instead."},
    )

    # -- optimisation (the Keras DDIM example's AdamW)
    train_batch_size: int = field(default=64, metadata={"help": "Batch size per device."})
    num_epochs: int = field(default=40, metadata={"help": "Epochs (ignored when max_train_steps is set)."})
    max_train_steps: Optional[int] = field(default=None, metadata={"help": "Total optimiser steps."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimiser step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    lr_scheduler: str = field(default="constant", metadata={"help": "diffusers.optimization scheduler name."})
    lr_warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    use_ema: bool = field(default=True, metadata={"help": "Keep an exponential moving average of the weights."})
    ema_decay: float = field(
        default=0.999,
        metadata={"help": "EMA decay, the most it reaches. diffusers' EMAModel ramps the decay as (1 + s) / (10 + s) "
                          "at step s up to this value, which takes about 9 / (1 - ema_decay) steps (9,000 for 0.999): "
                          "in shorter runs ema_decay has no effect (the trainer says so at the start)."},
    )
    ema_min_decay: float = field(
        default=0.0,
        metadata={"help": "EMAModel's min_decay: the decay never drops below it. ema_min_decay = ema_decay gives a "
                          "constant decay from the first step, as the Keras DDIM example's EMA."},
    )
    ema_power: Optional[float] = field(default=None, metadata={"help": (
        "A power-function warm-up instead of EMAModel's (1 + s) / (10 + s): the decay at step s is 1 - (1 + s / "
        "ema_inv_gamma) ** -ema_power, capped at ema_decay (diffusers' use_ema_warmup). Power 1 with ema_inv_gamma = "
        "gamma + 1 is EDM2's power-function EMA, a fixed fraction of the run (gamma 8: the default warm-up's width).")})
    ema_inv_gamma: float = field(default=1.0, metadata={"help": "ema_power's inv_gamma (in steps)."})

    # -- hardware
    mixed_precision: str = field(
        default="no",
        metadata={"help": "'no', 'fp16', 'bf16' (on a CPU only with AVX512-BF16/AMX; emulated otherwise) or 'auto': "
                          "bf16 on a GPU that has it, else fp16 on a GPU, bf16 on a CPU with AVX512-BF16/AMX, "
                          "else fp32 ('no')."}
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "Train in channels-last memory format (helps convolutions on GPUs with mixed precision; "
                          "no measurable gain on the 2-core CPU, see benchmarks/training_speed.py)."},
    )
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the UNet (in place: weights and checkpoints keep their plain names)."},
    )
    compile_backend: str = field(
        default="inductor", metadata={"help": "torch.compile backend (see torch.compiler.list_backends())."})
    compile_mode: Optional[str] = field(
        default=None,
        metadata={"help": "torch.compile mode: 'default', 'reduce-overhead', 'max-autotune' or "
                          "'max-autotune-no-cudagraphs' (unset: torch's default)."},
    )
    seed: int = field(default=42, metadata={"help": "Random seed."})

    # -- outputs
    output_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where checkpoints and the pipeline go (default: outputs/<name of the data>, e.g. "
                          "outputs/digits, outputs/my_images for --train_data_dir ~/my_images)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train anew in an output_dir that holds an earlier run: its checkpoints and sample grids are "
                          "deleted (once the set-up checks pass), so that 'latest' can only mean this run's. "
                          "Ignored with resume_from_checkpoint."},
    )
    logger: str = field(default="tensorboard", metadata={"help": "'tensorboard', 'wandb', 'trackio' or 'none'."})
    logging_dir: str = field(default="logs", metadata={"help": "Tracker folder, inside output_dir."})
    logging_steps: int = field(default=10, metadata={"help": "Log (and check the loss is finite) every N steps."})
    checkpointing_steps: int = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps."})
    checkpoints_total_limit: Optional[int] = field(default=None, metadata={"help": "Keep at most N checkpoints."})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={"help": "A checkpoint folder or 'latest'."})
    save_images_steps: int = field(default=500, metadata={"help": "Save a sample grid every N steps."})
    num_grid_images: int = field(default=36, metadata={"help": "Images in each sample grid (fixed noise)."})
    grid_inference_steps: int = field(default=20, metadata={"help": "DDIM steps for the sample grids."})

    # -- evaluation during training (the Keras example measures KID every epoch)
    eval_every_epochs: int = field(default=0, metadata={"help": "KID of the EMA pipeline every N epochs (0: off)."})
    eval_num_samples: int = field(default=500, metadata={"help": "Generated images per KID evaluation."})
    eval_inference_steps: int = field(default=5, metadata={"help": "DDIM steps for KID (Keras example: 5)."})
    eval_features: str = field(default="auto", metadata={"help": "'auto', 'digits' or 'inception'."})
    inception_weights: Optional[str] = field(default=None, metadata={"help": "Local Inception-v3 weights file."})

    # -- the Hub
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final pipeline, card and samples."})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Repo id (default: output_dir's name)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the repo private."})
    hub_license: str = field(default="apache-2.0", metadata={"help": "The license in the model card (a Hub license id)."})
    hub_token: Optional[str] = field(
        default=None, metadata={"help": "Hub token (default: HF_TOKEN or the stored login); never written to disk."})
    hub_push_checkpoints: bool = field(
        default=False, metadata={"help": "Also push each checkpoint's pipeline, in the background."})

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = str(Path("outputs") / data_name(self))
        if isinstance(self.unet, str):
            self.unet = json.loads(self.unet)
        given = dict(self.unet or {})
        self.unet = {**DEFAULT_UNET, **given}
        levels = len(self.unet["block_out_channels"])
        for key, block in (("down_block_types", "DownBlock2D"), ("up_block_types", "UpBlock2D")):
            if key not in given:  # widths alone set the depth: residual blocks at every level
                self.unet[key] = [block] * levels
        choices = {
            "loss": LOSSES, "loss_on": LOSS_TARGETS, "normalization": NORMALIZATIONS,
            "mixed_precision": MIXED_PRECISIONS, "schedule": ("cosine", "linear"),
            "prediction_type": ("epsilon", "sample", "v_prediction"),
            "eval_features": ("auto", "digits", "inception"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not valid; expected one of {allowed}.")
        if self.compile:
            check_compile_options(self.compile_backend, self.compile_mode, ConfigError, prefix="compile_")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels={self.channels} is not valid; expected 1 or 3.")
        positive = ("resolution", "train_batch_size", "gradient_accumulation_steps", "num_epochs", "logging_steps",
                    "checkpointing_steps", "save_images_steps", "grid_inference_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} is not valid; expected an integer >= 1.")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError(
                f"checkpoints_total_limit={self.checkpoints_total_limit} is not valid; expected an integer >= 1 "
                "(or unset to keep every checkpoint): resuming needs at least the newest one."
            )
        self._check_optimisation_and_output_options()
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise ConfigError(f"max_train_steps={self.max_train_steps} is not valid; expected an integer >= 1.")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ConfigError(f"cond_drop_prob={self.cond_drop_prob} is not valid; expected a value in [0, 1).")
        if not 0.0 <= self.patch_fraction < 1.0:  # the crop size is checked with the UNet (components.build_unet)
            raise ConfigError(f"patch_fraction={self.patch_fraction} is not valid; expected a value in [0, 1).")
        if not 0.0 <= self.class_balance <= 1.0:
            raise ConfigError(f"class_balance={self.class_balance} is not valid; expected a value in [0, 1].")
        if self.class_balance and (self.label_column is None or self.streaming):
            raise ConfigError(f"class_balance={self.class_balance} draws examples by class, which needs label_column "
                              "(a class-conditional model) and a dataset that is not streamed.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay} is not valid; expected a value in [0, 1).")
        if not 0.0 <= self.ema_min_decay <= self.ema_decay:
            raise ConfigError(f"ema_min_decay={self.ema_min_decay} is not valid; expected a value in "
                              f"[0, ema_decay={self.ema_decay}].")
        self._check_guidance_options()
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ConfigError(f"snr_gamma={self.snr_gamma} is not valid; expected a positive number (or unset).")
        if self.unet.get("num_class_embeds") and not self.label_column:
            raise ConfigError(f"unet.num_class_embeds={self.unet['num_class_embeds']} makes a class-conditional "
                              "model, which needs label_column (the dataset column holding the classes).")
        if (self.teacher is None) != (not self.distill_steps):
            raise ConfigError("Progressive distillation needs both teacher (a saved pipeline) and distill_steps "
                              f"(the students' step counts); got teacher={self.teacher!r}, "
                              f"distill_steps={self.distill_steps!r}.")
        if self.distill_steps:
            steps = [int(n) for n in self.distill_steps]
            if min(steps) < 1 or any(a != 2 * b for a, b in zip(steps, steps[1:])):
                raise ConfigError(f"distill_steps={self.distill_steps} is not valid; expected step counts >= 1, each "
                                  "half the one before (each round's teacher is the previous round's student), "
                                  "e.g. [32, 16, 8, 4, 2, 1].")
            self.distill_steps = steps
        if self.streaming and self.max_train_steps is None:
            raise ConfigError("streaming=True needs max_train_steps: a streamed dataset has no known length.")
        for name in ("in_channels", "out_channels", "sample_size"):
            if name in self.unet:
                raise ConfigError(f"unet.{name} is set from channels/resolution; remove it from the unet section.")

    def _check_guidance_options(self) -> None:
        """The training time distribution, the guide and the sampling defaults, each named when invalid."""
        if self.time_distribution not in TIME_DISTRIBUTIONS:
            raise ConfigError(f"time_distribution={self.time_distribution!r} is not valid; expected one of "
                              f"{TIME_DISTRIBUTIONS}.")
        if not self.p_std > 0:
            raise ConfigError(f"p_std={self.p_std} is not valid; expected a positive number.")
        if self.guide is not None and self.guide not in GUIDES:
            raise ConfigError(f"guide={self.guide!r} is not valid; expected one of {GUIDES} (or unset).")
        if not 0.0 < self.guide_fraction < 1.0:
            raise ConfigError(f"guide_fraction={self.guide_fraction} is not valid; expected a fraction in (0, 1).")
        if isinstance(self.sampling, str):
            try:
                self.sampling = json.loads(self.sampling)
            except json.JSONDecodeError as error:
                raise ConfigError(f"sampling={self.sampling!r} is not a JSON mapping: {error}") from error
        sampling = dict(self.sampling or {})
        scheduler = sampling.pop("scheduler", "ddim")
        if scheduler not in SAMPLERS:
            raise ConfigError(f"sampling.scheduler={scheduler!r} is not valid; expected one of {SAMPLERS}.")
        spacing = sampling.pop("timestep_spacing", None)
        if spacing is not None and spacing not in SPACINGS:
            raise ConfigError(f"sampling.timestep_spacing={spacing!r} is not valid; expected one of {SPACINGS}.")
        prior = sampling.get("class_prior")
        if prior == CLASS_PRIOR_FROM_DATA:  # counted from the training labels by the trainer
            del sampling["class_prior"]
        try:
            check_sampling_defaults(sampling)
        except ValueError as error:
            raise ConfigError(f"sampling: {error}") from error
        given = sampling.get(WITH_CLASS_LABELS)
        if (prior is not None or given is not None) and not self.label_column:
            what = f"class_prior={prior!r} draws" if prior is not None else f"{WITH_CLASS_LABELS} sets defaults for"
            raise ConfigError(f"sampling.{what} class labels, which needs a class-conditional model (label_column).")
        for where, defaults in (("sampling", sampling), (f"sampling.{WITH_CLASS_LABELS}", given or {})):
            if defaults.get("guidance_scale", 1.0) != 1.0 and not self.label_column:
                raise ConfigError(f"{where}.guidance_scale={defaults['guidance_scale']} is classifier-free guidance "
                                  "towards a class, which needs a class-conditional model (label_column).")
            if defaults.get("autoguidance_scale", 1.0) != 1.0 and self.guide is None:
                raise ConfigError(f"{where}.autoguidance_scale={defaults['autoguidance_scale']} needs a guide "
                                  f"(guide: {GUIDES[0]}).")

    def _check_optimisation_and_output_options(self) -> None:
        """The optimiser, data-loading and output options in range, each named when it is not."""
        at_least = {"num_grid_images": 1, "normalization_samples": 1, "dataloader_num_workers": 0, "lr_warmup_steps": 0,
                    "eval_every_epochs": 0, "eval_num_samples": 2, "eval_inference_steps": 1}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ConfigError(f"{name}={getattr(self, name)} is not valid; expected an integer >= {low}.")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ConfigError(f"max_train_samples={self.max_train_samples} is not valid; expected an integer >= 1 "
                              "(or unset for every example).")
        for name in ("learning_rate", "ema_inv_gamma", "ema_power"):  # ema_power may be unset
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} is not valid; expected a positive number.")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} is not valid; expected a value in [0, 1).")
        if self.adam_weight_decay < 0 or not self.adam_epsilon > 0 or self.max_grad_norm < 0:
            raise ConfigError(f"adam_weight_decay={self.adam_weight_decay}, adam_epsilon={self.adam_epsilon} and "
                              f"max_grad_norm={self.max_grad_norm} must be >= 0, > 0 and >= 0.")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"lr_scheduler={self.lr_scheduler!r} is not valid; expected one of {LR_SCHEDULERS}.")

    def to_dict(self) -> dict:
        """Every setting except secrets (the Hub token never lands in files, logs or cards)."""
        return {name: value for name, value in dataclasses.asdict(self).items() if name not in SECRET_FIELDS}


def data_name(config: "TrainingConfig") -> str:
    """A short name for the training data: the image folder's name, or the dataset's (its last part)."""
    source = config.train_data_dir or config.dataset_name or "data"
    return Path(str(source).rstrip("/\\")).expanduser().name or "data"
