"""The training loop: Accelerate for devices, processes, mixed precision, trackers and checkpoints.

Objective (the seeds'): for each image draw one continuous time t ~ U[0, 1] and noise eps,
form x_t = alpha_t x_0 + sigma_t eps, and penalise the network's estimate of the noise, the image
or the velocity (`loss_on`) with MAE or MSE (`loss`), whatever the network's `prediction_type`.
With `teacher`, the objective is progressive distillation instead (`distillation`): the student starts
as the teacher and learns two of its DDIM steps in one.

Resuming is exact: model, optimiser, LR schedule, EMA, every RNG and the position in the data are
restored, so N steps + resume + N steps gives the weights of 2N steps straight. The noise, times,
flips and label drops come from a dedicated generator per process whose state each checkpoint
stores; torch's global RNG (dropout) is re-seeded from (seed, process, step, micro-batch) before
every forward pass, so nothing else that draws from it (data loader iterators, sample grids,
evaluation) can shift it; random crops are a function of (seed, epoch, image) (see `data`).

A checkpoint is written to a temporary folder, renamed into place, and only then are old ones
pruned (`checkpoints_total_limit`), each renamed away before it is deleted: a kill at any moment
leaves `latest` a complete checkpoint.
"""

import json
import logging
import math
import os
import platform
import re
import shutil
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..models.compile import compile_unet
from ..models.unet_continuous import ContinuousUNet2DModel
from ..pipelines.pipeline_cosine_ddim import CosineDDIMPipeline
from ..schedulers.scheduling_cosine_ddim import CosineDDIMScheduler
from .config import ConfigError, TrainingConfig
from .data import RandomCropDataset, first_examples, pixel_statistics, prepare_dataset
from .distillation import check_teacher, distill, distillation_losses

logger = logging.getLogger(__name__)
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Folders of interrupted saves and prunes (".checkpoint-STEP.partial", ".checkpoint-STEP.deleting").
UNFINISHED_CHECKPOINT = re.compile(r"^\.checkpoint-(\d+)\.(partial|deleting)$")
WARMUP_STEPS = 20  # optimiser steps left out of the measured training throughput


def build_unet(config: TrainingConfig) -> ContinuousUNet2DModel:
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
    return CosineDDIMScheduler(
        schedule=config.schedule, min_signal_rate=config.min_signal_rate, max_signal_rate=config.max_signal_rate,
        prediction_type=config.prediction_type,
    )


def diffusion_losses(unet, scheduler: CosineDDIMScheduler, x0: torch.Tensor, config: TrainingConfig,
                     generator: torch.Generator, class_labels=None) -> dict[str, torch.Tensor]:
    """The training loss and the seeds' diagnostics (MAE on noise and on image) for one batch x0.

    With `snr_gamma`, each image's loss is weighted by Min-SNR-gamma (Hang et al. 2023). For MSE the
    weight is min(SNR, g) in image space, i.e. min(SNR, g) / SNR on the noise, min(SNR, g) on the
    image and min(SNR, g) / (SNR + 1) on the velocity, where SNR = alpha_t^2 / sigma_t^2. MAE errors
    scale with the square root of what MSE errors scale with (|x0 - x0_hat| = |eps - eps_hat| /
    sqrt(SNR), |v - v_hat| = sqrt(SNR + 1) |x0 - x0_hat|), so for MAE each weight is the square root
    of the MSE one: the same clamp of the per-time loss scale at g, stated for absolute errors.
    """
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    t = torch.rand(x0.shape[0], generator=generator, device=x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    prediction = unet(noisy, t, class_labels=class_labels).sample.float()
    x0_hat, eps_hat = scheduler.convert_model_output(prediction, t, noisy)
    signal, sigma = scheduler.signal_noise_rates(t, x0)
    if config.loss_on == "noise":
        estimate, target = eps_hat, noise
    elif config.loss_on == "image":
        estimate, target = x0_hat, x0
    else:
        estimate, target = signal * eps_hat - sigma * x0_hat, scheduler.get_velocity(x0, noise, t)
    loss_fn = F.l1_loss if config.loss == "mae" else F.mse_loss
    if config.snr_gamma is None:
        loss = loss_fn(estimate, target)
    else:
        snr = (signal / sigma).flatten() ** 2
        clipped = torch.clamp(snr, max=config.snr_gamma)
        weight = {"noise": clipped / snr, "image": clipped, "velocity": clipped / (snr + 1)}[config.loss_on]
        if config.loss == "mae":
            weight = weight.sqrt()
        per_image = loss_fn(estimate, target, reduction="none").flatten(1).mean(1)
        loss = (weight * per_image).mean()
    return {
        "loss": loss,
        "noise_loss": F.l1_loss(eps_hat.detach(), noise),
        "image_loss": F.l1_loss(x0_hat.detach(), x0),
    }


def image_grid(images: torch.Tensor, min_tile: int = 64, padding: int = 2) -> PIL.Image.Image:
    """(N, C, H, W) images in [0, 1] -> one PIL image: an about-square grid of tiles upscaled
    (nearest) to at least `min_tile` pixels, separated by `padding` gray pixels."""
    n, c, h, w = images.shape
    scale = max(1, math.ceil(min_tile / h))
    tiles = images.float().cpu().repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    th, tw = h * scale + padding, w * scale + padding
    grid = torch.full((c, rows * th + padding, cols * tw + padding), 0.5)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, cols)
        grid[:, padding + r * th:padding + r * th + h * scale, padding + col * tw:padding + col * tw + w * scale] = tile
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return PIL.Image.fromarray(array.squeeze(-1) if c == 1 else array)


def describe_hardware(accelerator: Accelerator) -> str:
    """E.g. 'NVIDIA H100 80GB HBM3 x 8 processes, bf16' or 'Intel(R) Xeon(R) ... (2 cores), fp32'."""
    if accelerator.device.type == "cuda":
        device = torch.cuda.get_device_name(accelerator.device)
    else:
        device = platform.processor() or platform.machine()
        try:
            names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")]
            device = names[0] if names else device
        except OSError:
            pass
        device = f"{device} ({os.cpu_count()} cores)"
    processes = f" x {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""
    precision = "fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision
    return f"{device}{processes}, {precision}"


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


class Trainer:
    """Trains a `CosineDDIMPipeline` as `config` says. `train()` returns the saved pipeline's folder."""

    def __init__(self, config: TrainingConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.started, self.previous_seconds = time.perf_counter(), 0.0
        self.hub_futures = []  # (folder, Future) of background checkpoint pushes
        self.kid_history = []
        self.train_images_per_second = None
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=None if config.logger == "none" else config.logger,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / config.logging_dir)
            ),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )

    # ------------------------------------------------------------------ set-up (all checks first)
    def _check_output_dir(self) -> bool:
        """Refuse to train over an earlier run by accident; True when an earlier run is to be replaced."""
        config = self.config
        existing = self.output_dir.is_dir() and (
            (self.output_dir / "model_index.json").exists() or find_checkpoint(self.output_dir, "latest") is not None
        )
        if existing and not config.resume_from_checkpoint and not config.overwrite_output_dir:
            raise ConfigError(
                f"output_dir {str(self.output_dir)!r} already holds a trained pipeline or checkpoints; pass "
                "--resume_from_checkpoint latest to continue, --overwrite_output_dir to train anew, or another output_dir."
            )
        return existing and not config.resume_from_checkpoint

    def _remove_previous_run(self):
        """--overwrite_output_dir: the earlier run's checkpoints and sample grids go, so that a later
        `--resume_from_checkpoint latest` can only find this run's."""
        for path in self.output_dir.iterdir():
            if CHECKPOINT.match(path.name) or UNFINISHED_CHECKPOINT.match(path.name) or path.name == "samples":
                shutil.rmtree(path)

    def _remove_unfinished_checkpoints(self):
        """Folders left by a save or a prune that was killed half-way; never a resumable checkpoint."""
        for path in self.output_dir.glob(".checkpoint-*"):
            if UNFINISHED_CHECKPOINT.match(path.name):
                shutil.rmtree(path, ignore_errors=True)

    def setup(self):
        config, accelerator = self.config, self.accelerator
        replace_previous_run = self._check_output_dir()
        set_seed(config.seed)
        self.teacher = None
        if config.teacher:  # progressive distillation: the student starts as a copy of the teacher
            self.teacher = CosineDDIMPipeline.from_pretrained(config.teacher)
            check_teacher(self.teacher, config)
            self.unet = ContinuousUNet2DModel.from_config(self.teacher.unet.config)
            self.unet.load_state_dict(self.teacher.unet.state_dict())
            self.teacher.unet.to(accelerator.device).eval().requires_grad_(False)
            # The teacher's schedule and time spacing (the student is sampled on the same times).
            self.noise_scheduler = CosineDDIMScheduler.from_config(self.teacher.scheduler.config,
                                                                   prediction_type=config.prediction_type)
        else:
            self.unet = build_unet(config)
            self.noise_scheduler = build_scheduler(config)
        # The UNet's last class embedding means "no class" (as CosineDDIMPipeline.null_class_label).
        num_class_embeds = self.unet.config.num_class_embeds
        self.null_class_label = None if num_class_embeds is None else num_class_embeds - 1
        with accelerator.main_process_first():  # the others then read the decoded data from datasets' cache
            self.dataset = prepare_dataset(config)
        if self.teacher is not None:  # the student works in the teacher's standardised space
            self.image_mean, self.image_std = list(self.teacher.config.image_mean), list(self.teacher.config.image_std)
        elif config.normalization == "dataset":
            self.image_mean, self.image_std = pixel_statistics(self.dataset, config)
        else:
            self.image_mean, self.image_std = [0.5] * config.channels, [0.5] * config.channels
        self.use_labels = config.label_column is not None and self.unet.config.num_class_embeds is not None
        if self.use_labels:
            self._check_labels()

        self.ema = None
        if config.use_ema:
            self.ema = EMAModel(self.unet.parameters(), decay=config.ema_decay, min_decay=config.ema_min_decay,
                                foreach=True, model_cls=ContinuousUNet2DModel, model_config=self.unet.config)
        optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
            foreach=True,  # one multi-tensor update instead of a loop over parameters (torch uses it on GPUs only by default)
        )
        # Random crops come with their own sampler: (epoch, index) pairs, shuffled per epoch.
        sampler = self.dataset.sampler(config.seed) if isinstance(self.dataset, RandomCropDataset) else None
        dataloader = torch.utils.data.DataLoader(
            self.dataset, batch_size=config.train_batch_size, shuffle=not config.streaming and sampler is None,
            sampler=sampler, num_workers=config.dataloader_num_workers,
            pin_memory=accelerator.device.type == "cuda", persistent_workers=config.dataloader_num_workers > 0,
        )
        if config.streaming:
            self.steps_per_epoch = None  # unknown: an epoch is one pass over the stream
        else:
            batches = math.ceil(len(self.dataset) / (config.train_batch_size * accelerator.num_processes))
            self.steps_per_epoch = max(1, math.ceil(batches / config.gradient_accumulation_steps))
        self.max_train_steps = config.max_train_steps or config.num_epochs * self.steps_per_epoch
        if self.ema is not None and accelerator.is_main_process:
            last = self.ema.get_decay(self.max_train_steps)  # the decay of the run's last EMA update
            if last < config.ema_decay:
                logger.warning(
                    "ema_decay=%s is not reached in this run's %d steps: EMAModel's warm-up (1 + s) / (10 + s) "
                    "only reaches %.4f by the last step, so the EMA averages about the last %d steps whatever "
                    "ema_decay is. Set ema_min_decay (e.g. equal to ema_decay for a constant decay) to change it.",
                    config.ema_decay, self.max_train_steps, last, round(1 / (1 - last)))
        lr_scheduler = get_scheduler(
            config.lr_scheduler, optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=self.max_train_steps * accelerator.num_processes,
        )
        if config.channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last)
        if config.compile:
            compile_unet(self.unet, config.compile_backend, config.compile_mode)
        self.unet, self.optimizer, self.dataloader, self.lr_scheduler = accelerator.prepare(
            self.unet, optimizer, dataloader, lr_scheduler
        )
        if self.ema is not None:
            self.ema.to(accelerator.device)
            accelerator.register_for_checkpointing(self.ema)
        self.generator = torch.Generator(device=accelerator.device).manual_seed(
            config.seed + 1000 * accelerator.process_index + 1
        )
        self.kid_features = self.real_features = None
        if config.eval_every_epochs and accelerator.is_main_process:  # only the main process evaluates
            self._setup_kid()
        shape = (config.num_grid_images, config.channels, config.resolution, config.resolution)
        self.grid_latents = torch.randn(shape, generator=torch.Generator().manual_seed(config.seed))
        self.stats = (
            torch.tensor(self.image_mean, device=accelerator.device).view(1, -1, 1, 1),
            torch.tensor(self.image_std, device=accelerator.device).view(1, -1, 1, 1),
        )
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if replace_previous_run:
                self._remove_previous_run()
            self._remove_unfinished_checkpoints()
            (self.output_dir / "training_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            if config.logger != "none":
                flat = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                        for k, v in config.to_dict().items()}
                accelerator.init_trackers("train_ddim", config=flat)
        accelerator.wait_for_everyone()

    def _setup_kid(self):
        """Load the KID feature extractor and embed the real images once (errors surface before training)."""
        from ..evaluation.features import feature_extractor, resolve_features
        from ..evaluation.kid import extract_features

        config = self.config
        name = resolve_features(config.eval_features, config.dataset_name, config.train_data_dir)
        try:
            self.kid_features = feature_extractor(name, config.inception_weights).to(self.accelerator.device)
        except RuntimeError as error:
            raise ConfigError(f"eval_every_epochs={config.eval_every_epochs} needs KID features: {error}") from error
        count = config.eval_num_samples if config.streaming else min(len(self.dataset), 5000)
        pixels = torch.stack([example["pixel_values"] for example in first_examples(self.dataset, count)])
        self.real_features = extract_features(pixels.float() / 255.0, self.kid_features)

    def evaluate_kid(self) -> dict[str, float]:
        """KID/FID of the EMA pipeline's samples against the training images."""
        from ..evaluation.kid import extract_features, generate, kid_fid

        config = self.config
        pipe = self.pipeline()
        fake, _ = generate(pipe, config.eval_num_samples, self.student_steps or config.eval_inference_steps, seed=config.seed)
        return kid_fid(self.real_features, extract_features(fake, self.kid_features))

    def _check_labels(self):
        """Class labels must be integers below the UNet's "no class" embedding (its last one)."""
        config = self.config
        null = self.null_class_label
        if config.streaming:
            labels = torch.as_tensor([next(iter(self.dataset))["labels"]])
        elif isinstance(self.dataset, RandomCropDataset):  # read the column without decoding images
            labels = torch.as_tensor(self.dataset.raw.with_format(None)[config.label_column])
        else:
            plain = self.dataset.with_format(None)
            labels = torch.as_tensor(plain["labels" if "labels" in plain.column_names else config.label_column])
        if labels.is_floating_point() or labels.min() < 0 or labels.max() >= null:
            raise ConfigError(
                f"label_column={config.label_column!r} holds labels from {labels.min().item()} to {labels.max().item()}, "
                f"but unet.num_class_embeds={null + 1} allows 0..{null - 1} (the last embedding means 'no class'); "
                f"set num_class_embeds to the number of classes + 1."
            )

    def labels_for_training(self, labels: torch.Tensor) -> torch.Tensor:
        """Replace each label by "no class" with probability cond_drop_prob (classifier-free guidance)."""
        if self.config.cond_drop_prob <= 0:
            return labels
        drop = torch.rand(labels.shape[0], generator=self.generator, device=labels.device) < self.config.cond_drop_prob
        return torch.where(drop, torch.full_like(labels, self.null_class_label), labels)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, position: dict) -> Path:
        """Write `checkpoint-STEP` through a temporary folder, rename it into place, then prune.

        `position` is where the data stands (`epoch`, `batches_in_epoch`). A kill at any moment leaves
        the newest complete checkpoint as `latest`: the new one takes its name only once complete,
        and old ones are pruned only after that, each renamed away before it is deleted.
        """
        accelerator, config = self.accelerator, self.config
        final = self.output_dir / f"checkpoint-{step}"
        partial = self.output_dir / f".checkpoint-{step}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        torch.save(self.generator.get_state(), partial / f"noise_rng_{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            state = {"training_seconds": self.training_seconds(), **position, "kid_history": self.kid_history}
            (partial / "training_state.json").write_text(json.dumps(state))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            if config.checkpoints_total_limit is not None:
                self._prune_checkpoints(config.checkpoints_total_limit)
        accelerator.wait_for_everyone()
        return final

    def _prune_checkpoints(self, limit: int):
        kept = sorted((int(m.group(1)), p) for p in self.output_dir.glob("checkpoint-*") if (m := CHECKPOINT.match(p.name)))
        for step, old in kept[: max(0, len(kept) - limit)]:
            doomed = self.output_dir / f".checkpoint-{step}.deleting"
            os.replace(old, doomed)  # atomic: a half-deleted folder never keeps a checkpoint name
            shutil.rmtree(doomed)

    def push_checkpoint(self, checkpoint: Path, step: int):
        """Upload this checkpoint's EMA pipeline to the Hub repo in the background (`run_as_future`)."""
        from ..hub import push_folder

        folder = checkpoint / "pipeline"
        self.pipeline().save_pretrained(folder)
        repo_id = self.config.hub_model_id or self.output_dir.resolve().name
        future = push_folder(folder, repo_id, private=self.config.hub_private_repo or None, token=self.config.hub_token,
                             commit_message=f"Checkpoint {step}", run_as_future=True)
        self.hub_futures.append((folder, future))

    def resume(self) -> tuple[int, int, int]:
        """Restore the checkpoint `resume_from_checkpoint` names.

        Returns `(global_step, epoch, batches_in_epoch)`: where training and the data stand
        (zeros when starting anew).
        """
        if not self.config.resume_from_checkpoint:
            return 0, 0, 0
        path = find_checkpoint(self.output_dir, self.config.resume_from_checkpoint)
        if path is None:
            logger.warning("No checkpoint in %s; starting a new run.", self.output_dir)
            return 0, 0, 0
        self.accelerator.load_state(str(path))
        if self.ema is not None:  # load_state restores registered objects on the CPU
            self.ema.to(self.accelerator.device)
        rng_file = path / f"noise_rng_{self.accelerator.process_index}.pt"
        self.generator.set_state(torch.load(rng_file))
        step = int(CHECKPOINT.match(path.name).group(1))
        state_file = path / "training_state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        self.previous_seconds = state.get("training_seconds", 0.0)
        self.kid_history = state.get("kid_history", [])
        if "epoch" in state:
            position = state["epoch"], state["batches_in_epoch"]
        elif self.steps_per_epoch is not None:  # checkpoints written before positions were stored
            position = step // self.steps_per_epoch, (step % self.steps_per_epoch) * self.config.gradient_accumulation_steps
        else:
            raise ConfigError(f"{path} does not record its position in the stream; it cannot be resumed exactly.")
        self.accelerator.print(f"Resumed from {path}")
        return step, *position

    def training_seconds(self) -> float:
        """Wall time spent training, across resumed runs."""
        return self.previous_seconds + time.perf_counter() - self.started

    # ------------------------------------------------------------------ pipelines and grids
    def pipeline(self, ema_weights: bool = True) -> CosineDDIMPipeline:
        """A pipeline around an unwrapped copy of the UNet (with the EMA weights when kept)."""
        unet = self.accelerator.unwrap_model(self.unet)
        copy = ContinuousUNet2DModel.from_config(unet.config)
        copy.load_state_dict(unet.state_dict())
        if ema_weights and self.ema is not None:
            self.ema.copy_to(copy.parameters())
        pipe = CosineDDIMPipeline(copy.to(self.accelerator.device).eval(),
                                  CosineDDIMScheduler.from_config(self.noise_scheduler.config),
                                  image_mean=self.image_mean, image_std=self.image_std,
                                  distilled_steps=self.student_steps)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def student_steps(self) -> int | None:
        """The step count the student is distilled for (None when not distilling)."""
        return self.config.distill_steps[0] if self.teacher is not None else None

    @property
    def grid_steps(self) -> int:
        return self.student_steps or self.config.grid_inference_steps

    def losses(self, x0: torch.Tensor, labels) -> dict[str, torch.Tensor]:
        """The batch's loss and diagnostics: the diffusion objective, or the distillation one."""
        if self.teacher is None:
            return diffusion_losses(self.unet, self.noise_scheduler, x0, self.config, self.generator, labels)
        return distillation_losses(self.unet, self.noise_scheduler, self.teacher.unet, self.teacher.scheduler, x0,
                                   self.student_steps, self.generator, labels)

    def save_grid(self, step: int) -> Path:
        pipe = self.pipeline()
        images = pipe(latents=self.grid_latents, num_inference_steps=self.grid_steps, output_type="pt").images
        path = self.output_dir / "samples" / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images).save(path)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images("samples", images.cpu().numpy(), step)
        return path

    # ------------------------------------------------------------------ the loop
    def to_model_space(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.accelerator.device, non_blocking=True).float().div_(255.0)
        if self.config.random_flip:
            flip = torch.rand(x.shape[0], generator=self.generator, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        mean, std = self.stats
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def seed_global_rng(self, global_step: int, micro_batch: int):
        """Seed torch's global RNG (dropout draws from it) from (seed, process, step, micro-batch) alone."""
        key = [self.config.seed, self.accelerator.process_index, global_step, micro_batch]
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))

    def _synchronized_clock(self) -> float:
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        return time.perf_counter()

    def _raise_if_not_finite(self, first_bad: torch.Tensor):
        bad = int(first_bad.item())
        if bad:
            latest = find_checkpoint(self.output_dir, "latest")
            raise FloatingPointError(
                f"The loss became NaN or infinite at step {bad}; training stopped. "
                f"The last good checkpoint is {str(latest) if latest else 'none (no checkpoint was written yet)'}."
            )

    def train(self) -> Path:
        self.setup()
        config, accelerator = self.config, self.accelerator
        global_step, first_epoch, skip_batches = self.resume()
        device = accelerator.device
        first_bad = torch.zeros((), dtype=torch.long, device=device)  # the first step with a non-finite loss
        step_bad = torch.zeros((), dtype=torch.bool, device=device)  # any micro-batch of this step non-finite
        running = {k: torch.zeros((), device=device) for k in ("loss", "noise_loss", "image_loss")}
        running_count, images_seen, clock, micro_batch = 0, 0, time.perf_counter(), 0
        progress = tqdm(total=self.max_train_steps, initial=global_step, desc="Training", dynamic_ncols=True,
                        disable=not accelerator.is_local_main_process)
        # Throughput after a warm-up of WARMUP_STEPS optimiser steps (start-up and allocation excluded).
        warm_step, warm_clock = global_step + WARMUP_STEPS, None

        epoch = first_epoch
        while global_step < self.max_train_steps:
            self.unet.train()
            self.dataloader.set_epoch(epoch)
            loader = self.dataloader
            batches_in_epoch = skip_batches if epoch == first_epoch else 0
            if batches_in_epoch:
                loader = accelerator.skip_first_batches(self.dataloader, batches_in_epoch)
            passed = False
            for batch in loader:
                passed = True
                batches_in_epoch += 1
                self.seed_global_rng(global_step, micro_batch)
                micro_batch += 1
                with accelerator.accumulate(self.unet):
                    x0 = self.to_model_space(batch["pixel_values"])
                    labels = self.labels_for_training(batch["labels"].to(device)) if self.use_labels else None
                    losses = self.losses(x0, labels)
                    accelerator.backward(losses["loss"])
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(self.unet.parameters(), config.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                step_bad |= ~torch.isfinite(losses["loss"].detach())  # every micro-batch, without a sync
                for key in running:
                    running[key] += losses[key].detach()
                running_count += 1
                images_seen += x0.shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                micro_batch = 0
                if self.ema is not None:
                    self.ema.step(self.unet.parameters())
                first_bad = torch.where((first_bad == 0) & step_bad, torch.full_like(first_bad, global_step), first_bad)
                step_bad = torch.zeros_like(step_bad)
                progress.update(1)
                if global_step == warm_step:
                    warm_clock = self._synchronized_clock()

                if global_step % config.logging_steps == 0 or global_step == self.max_train_steps:
                    self._raise_if_not_finite(first_bad)
                    elapsed = time.perf_counter() - clock
                    logs = {k: (v / running_count).item() for k, v in running.items()}
                    logs["lr"] = self.lr_scheduler.get_last_lr()[0]
                    logs["images_per_second"] = images_seen / max(elapsed, 1e-9)
                    progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}",
                                         img_s=f"{logs['images_per_second']:.0f}")
                    accelerator.log(logs, step=global_step)
                    running = {k: torch.zeros((), device=device) for k in running}
                    running_count, images_seen, clock = 0, 0, time.perf_counter()
                if global_step % config.checkpointing_steps == 0:
                    self._raise_if_not_finite(first_bad)  # never checkpoint weights a bad step touched
                    checkpoint = self.save_checkpoint(global_step, {"epoch": epoch, "batches_in_epoch": batches_in_epoch})
                    if config.push_to_hub and config.hub_push_checkpoints and accelerator.is_main_process:
                        self.push_checkpoint(checkpoint, global_step)
                if global_step % config.save_images_steps == 0 and accelerator.is_main_process:
                    self.save_grid(global_step)
                if global_step >= self.max_train_steps:
                    break
            if not passed and not (epoch == first_epoch and skip_batches):
                raise ConfigError(f"The dataset yielded no batch in epoch {epoch}; it is empty.")
            if config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0 and accelerator.is_main_process:
                scores = self.evaluate_kid()
                accelerator.log(scores, step=global_step)
                self.kid_history.append({"epoch": epoch + 1, "step": global_step, **scores})
                progress.write(f"epoch {epoch + 1}: KID {scores['kid']:.4f} ± {scores['kid_std']:.4f}, FID {scores['fid']:.2f}")
            epoch += 1
        progress.close()
        if warm_clock is not None and global_step > warm_step:
            images = ((global_step - warm_step) * config.train_batch_size * config.gradient_accumulation_steps
                      * accelerator.num_processes)
            self.train_images_per_second = images / (self._synchronized_clock() - warm_clock)
        self._raise_if_not_finite(first_bad)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.finish(global_step)
        accelerator.end_training()
        return self.output_dir

    def finish(self, global_step: int):
        """Save the EMA pipeline, its sample grid, a training summary and the model card; push if asked."""
        from ..hub import PushError, push_folder, retry_command, write_model_card

        config = self.config
        pipe = self.pipeline()
        pipe.save_pretrained(self.output_dir)
        images = pipe(latents=self.grid_latents, num_inference_steps=self.grid_steps, output_type="pt").images
        image_grid(images).save(self.output_dir / "samples.png")
        summary = {
            "global_step": global_step, "training_seconds": round(self.training_seconds(), 1),
            "hardware": describe_hardware(self.accelerator),
            "num_parameters": sum(p.numel() for p in pipe.unet.parameters()),
            "image_mean": self.image_mean, "image_std": self.image_std,
        }
        if self.train_images_per_second is not None:
            summary["train_images_per_second"] = round(self.train_images_per_second, 2)
        if self.kid_history:
            summary["kid_history"] = self.kid_history
        (self.output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        repo_id = config.hub_model_id or self.output_dir.resolve().name
        write_model_card(self.output_dir, repo_id if config.push_to_hub else None)
        failed = []
        for folder, future in self.hub_futures:
            try:
                future.result()
            except Exception as error:  # noqa: BLE001 - reported with its retry command; the final push goes on
                failed.append(f"{folder} ({type(error).__name__}: {error}); retry with: "
                              f"{retry_command(folder, repo_id, config.hub_private_repo or None)}")
        for line in failed:
            logger.warning("A checkpoint push failed: %s", line)
        if config.push_to_hub:
            info = push_folder(self.output_dir, repo_id, private=config.hub_private_repo or None,
                               token=config.hub_token)
            self.accelerator.print(f"Pushed to {info.commit_url}")
        if failed:
            raise PushError(f"{len(failed)} checkpoint push(es) failed; every local file is kept. "
                            + " ".join(failed))


def train(config: TrainingConfig) -> Path:
    """Train as `config` says and return the folder holding the saved pipeline (with a teacher: the
    last distillation round's student)."""
    if config.teacher:
        return distill(config)
    return Trainer(config).train()
