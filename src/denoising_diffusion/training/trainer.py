"""The training loop: Accelerate for devices, processes, mixed precision, trackers and checkpoints.

`Trainer(config)` builds everything a run needs (model, EMA, optimiser, LR schedule, data,
checkpoints, callbacks) and checks it before anything is written; `train()` is the loop. What the
loop minimises is an objective (`objectives.DiffusionObjective` unless one is handed in, e.g.
`distillation.DistillationObjective`); periodic work is done by callbacks (`callbacks`).

Resuming is exact: model, optimiser, LR schedule, EMA, every RNG and the position in the data are
restored, so N steps + resume + N steps gives the weights of 2N steps straight. The noise, times,
flips and label drops come from a dedicated generator per process whose state each checkpoint
stores; torch's global RNG (dropout) is re-seeded from (seed, process, step, micro-batch) before
every forward pass, so nothing else that draws from it (data loader iterators, sample grids,
evaluation) can shift it; random crops are a function of (seed, epoch, image) (see `data`).
"""

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from ..hardware import describe_device
from ..models.compile import compile_unet
from ..models.unet_continuous import ContinuousUNet2DModel
from ..pipelines.pipeline_cosine_ddim import CosineDDIMPipeline
from ..publishing import write_model_card
from ..schedulers.scheduling_cosine_ddim import CosineDDIMScheduler
from .callbacks import Callback, HubPushes, KIDEvaluation, SampleGrids, Throughput
from .checkpoints import (Checkpoints, check_checkpoint_fits, check_output_dir, checkpoint_step, remove_previous_run,
                          remove_unfinished_checkpoints, resume_target)
from .components import (build_ema, build_scheduler, build_unet, resolve_class_prior, resolve_mixed_precision,
                         sampling_components)
from .config import ConfigError, TrainingConfig
from .data import check_labels, class_names, number_of_classes, pixel_statistics, prepare_dataset
from .guide import GuideSnapshot
from .monitor import LossMonitor
from .objectives import DiffusionObjective

logger = logging.getLogger(__name__)


class Trainer:
    """Trains a `CosineDDIMPipeline` as `config` says; `train()` returns the saved pipeline's folder.

    Args:
        config: the run's settings.
        objective: what the loop minimises (default: `DiffusionObjective.from_config(config)`); its
            `distilled_steps` (None for plain diffusion) is the step count of the saved pipeline.
        callbacks: extra `Callback`s, called after the built-in ones (grids, KID, Hub pushes).
        unet, noise_scheduler: the starting model and its scheduler (default: built from `config`).
        image_stats: `(mean, std)` per channel of the model's standardised space (default: as
            `config.normalization` says).
    """

    def __init__(self, config: TrainingConfig, objective=None, callbacks: list[Callback] = (),
                 unet: ContinuousUNet2DModel | None = None, noise_scheduler: CosineDDIMScheduler | None = None,
                 image_stats: tuple[list[float], list[float]] | None = None):
        self.config = config
        config.mixed_precision = resolve_mixed_precision(config.mixed_precision)  # recorded as trained
        self.output_dir = Path(config.output_dir)
        self.started, self.previous_seconds, self.micro_batch = time.perf_counter(), 0.0, 0
        self.accelerator = accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps, mixed_precision=config.mixed_precision,
            log_with=None if config.logger == "none" else config.logger,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / config.logging_dir)),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        replace_previous_run = check_output_dir(self.output_dir, config)
        self.resume_path = resume_target(self.output_dir, config.resume_from_checkpoint)
        with accelerator.main_process_first():  # the others then read the decoded data from datasets' cache
            self.images = prepare_dataset(config)
        if unet is None and config.label_column is not None and config.unet.get("num_class_embeds") is None:
            config.unet["num_class_embeds"] = number_of_classes(config, self.images) + 1  # the last one means "no class"
        set_seed(config.seed)
        self.unet = unet if unet is not None else build_unet(config)  # checks the UNet-dependent options first
        self.objective = (objective or DiffusionObjective.from_config(config)).to(accelerator.device)
        self.noise_scheduler = noise_scheduler if noise_scheduler is not None else build_scheduler(config)
        self.image_mean, self.image_std = image_stats or self._image_statistics()
        num_class_embeds = self.unet.config.num_class_embeds  # its last embedding means "no class"
        self.null_class_label = None if num_class_embeds is None else num_class_embeds - 1
        self.use_labels = config.label_column is not None and num_class_embeds is not None
        self.class_names, labels = None, None
        if self.use_labels:
            labels = self.images.labels()  # checked, counted for `class_prior: dataset`, drawn by class_balance
            check_labels(labels, config.label_column, self.null_class_label)
            self.class_names = class_names(config, self.images, self.null_class_label)
        # the saved pipeline's sampling defaults, `class_prior: dataset` counted from the training labels
        self.sampling = resolve_class_prior(config.sampling, labels, self.null_class_label, config.streaming)
        self._prepare_model_and_data()
        self.generator = torch.Generator(device=accelerator.device).manual_seed(
            config.seed + 1000 * accelerator.process_index + 1
        )
        if self.resume_path is not None:
            check_checkpoint_fits(self.resume_path, self.accelerator.unwrap_model(self.unet).config)
        self.checkpoints = Checkpoints(accelerator, self.output_dir, config.checkpoints_total_limit)
        self.guide = GuideSnapshot(config.guide_fraction, self.max_train_steps) if config.guide else None
        if self.guide is not None:
            self.guide.check_resume(self.resume_path)
        self.callbacks = self._builtin_callbacks() + list(callbacks)
        self.stats = tuple(torch.tensor(v, device=accelerator.device).view(1, -1, 1, 1)
                           for v in (self.image_mean, self.image_std))
        if accelerator.is_main_process:
            self._start_output_dir(replace_previous_run)
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ set-up (all checks first)
    def _image_statistics(self) -> tuple[list[float], list[float]]:
        if self.config.normalization == "dataset":
            return pixel_statistics(self.images, self.config)
        return [0.5] * self.config.channels, [0.5] * self.config.channels

    def _prepare_model_and_data(self) -> None:
        """EMA, AdamW, the data loader and the LR schedule, handed to Accelerate."""
        config, accelerator = self.config, self.accelerator
        self.ema = build_ema(config, self.unet) if config.use_ema else None
        optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
            foreach=True,  # one multi-tensor update instead of a loop over parameters (torch uses it on GPUs only by default)
        )
        class_balance = config.class_balance if self.use_labels else 0.0
        if config.class_balance and not self.use_labels:  # label_column: auto on images without class subfolders
            logger.warning("class_balance=%s is ignored: the images have no classes.", config.class_balance)
        dataloader = self.images.dataloader(config.train_batch_size, config.seed, config.dataloader_num_workers,
                                            pin_memory=accelerator.device.type == "cuda", class_balance=class_balance)
        self.steps_per_epoch = None  # a stream: an epoch is one pass, of unknown length
        if not config.streaming:
            batches = math.ceil(self.images.num_examples / (config.train_batch_size * accelerator.num_processes))
            self.steps_per_epoch = max(1, math.ceil(batches / config.gradient_accumulation_steps))
        self.max_train_steps = config.max_train_steps or config.num_epochs * self.steps_per_epoch
        self._warn_if_ema_decay_is_not_reached()
        lr_scheduler = get_scheduler(
            config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
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

    def _warn_if_ema_decay_is_not_reached(self) -> None:
        if self.ema is None or not self.accelerator.is_main_process or self.config.ema_power is not None:
            return  # a power-function warm-up is meant to keep growing: its width is a fraction of the run
        config, last = self.config, self.ema.get_decay(self.max_train_steps)  # the decay of the last EMA update
        if last < config.ema_decay:
            logger.warning(
                "ema_decay=%s is not reached in this run's %d steps: EMAModel's warm-up (1 + s) / (10 + s) "
                "only reaches %.4f by the last step, so the EMA averages about the last %d steps whatever "
                "ema_decay is. Set ema_min_decay (e.g. equal to ema_decay for a constant decay) to change it.",
                config.ema_decay, self.max_train_steps, last, round(1 / (1 - last)))

    def _builtin_callbacks(self) -> list[Callback]:
        config, accelerator = self.config, self.accelerator
        images_per_step = config.train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes
        callbacks = [Throughput(images_per_step, self.max_train_steps, accelerator.device)]
        if self.guide is not None:
            callbacks.append(self.guide)
        if config.eval_every_epochs and accelerator.is_main_process:  # only the main process evaluates
            count = config.eval_num_samples if config.streaming else min(self.images.num_examples, 5000)
            callbacks.append(KIDEvaluation(config, self.images.pixels(count), accelerator.device,
                                           self.objective.distilled_steps or config.eval_inference_steps))
        shape = (config.num_grid_images, config.channels, config.resolution, config.resolution)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(config.seed))
        callbacks.append(SampleGrids(config.save_images_steps, latents,
                                     self.objective.distilled_steps or config.grid_inference_steps))
        if config.push_to_hub:
            callbacks.append(HubPushes(config, self.repo_id))
        return callbacks

    def _start_output_dir(self, replace_previous_run: bool) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if replace_previous_run:
            remove_previous_run(self.output_dir)
        remove_unfinished_checkpoints(self.output_dir)
        settings = self.config.to_dict()
        (self.output_dir / "training_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        if self.config.logger != "none":
            flat = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in settings.items()}
            self.accelerator.init_trackers("train_ddim", config=flat)

    @property
    def repo_id(self) -> str:
        return self.config.hub_model_id or self.output_dir.resolve().name

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, position: dict) -> Path:
        """`checkpoint-STEP` of this run; `position` is where the data stands (`epoch`, `batches_in_epoch`)."""
        state = {"training_seconds": self.training_seconds(), **position}
        for callback in self.callbacks:
            state.update(callback.state_dict())
        unet = self.accelerator.unwrap_model(self.unet)
        pipeline = {"unet": dict(unet.config), "scheduler": dict(self.noise_scheduler.config),
                    "sampling": self.sampling, "image_mean": self.image_mean, "image_std": self.image_std,
                    "distilled_steps": self.objective.distilled_steps, "class_names": self.class_names,
                    "guide_info": None if self.guide is None else self.guide.info,
                    "summary": {"hardware": self.hardware(), "num_train_images": self.images.num_examples}}
        return self.checkpoints.save(step, self.generator, state, json.loads(json.dumps(pipeline, default=list)))

    def resume(self) -> tuple[int, int, int]:
        """Restore the checkpoint `resume_from_checkpoint` names.

        Returns `(global_step, epoch, batches_in_epoch)`: where training and the data stand
        (zeros when starting anew).
        """
        path = self.resume_path
        if path is None:
            if self.config.resume_from_checkpoint:
                logger.warning("No checkpoint in %s; starting a new run.", self.output_dir)
            return 0, 0, 0
        state = self.checkpoints.load(path, self.generator)
        if self.ema is not None:  # load_state restores registered objects on the CPU
            self.ema.to(self.accelerator.device)
        step = checkpoint_step(path)
        self.previous_seconds = state.get("training_seconds", 0.0)
        for callback in self.callbacks:
            callback.load_state_dict(state)
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

    # ------------------------------------------------------------------ what callbacks use
    def pipeline(self, ema_weights: bool = True) -> CosineDDIMPipeline:
        """A pipeline around an unwrapped copy of the UNet (with the EMA weights when kept), its guide once
        taken, and the config's sampling scheduler and defaults."""
        unet = self.accelerator.unwrap_model(self.unet)
        copy = ContinuousUNet2DModel.from_config(unet.config)
        copy.load_state_dict(unet.state_dict())
        if ema_weights and self.ema is not None:
            self.ema.copy_to(copy.parameters())
        copy = copy.to(self.accelerator.device).eval()
        guide = None if self.guide is None else self.guide.unet(copy)  # None before the snapshot
        scheduler, defaults = sampling_components(self.sampling, self.noise_scheduler.config, guide is not None)
        pipe = CosineDDIMPipeline(copy, scheduler,
                                  image_mean=self.image_mean, image_std=self.image_std,
                                  distilled_steps=self.objective.distilled_steps, class_names=self.class_names,
                                  guide_unet=guide, guide_info=None if guide is None else self.guide.info,
                                  sampling_defaults=defaults)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def hardware(self) -> str:
        """What this run trains on, e.g. 'NVIDIA H100 80GB HBM3 x 8 processes, bf16'."""
        precision = self.accelerator.mixed_precision
        return describe_device(self.accelerator.device, self.accelerator.num_processes,
                               "fp32" if precision == "no" else precision)

    def write(self, message: str) -> None:
        """A line printed without breaking the progress bar."""
        tqdm.write(message)

    # ------------------------------------------------------------------ the loop
    def to_model_space(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.accelerator.device, non_blocking=True).float().div_(255.0)
        if self.config.random_flip:
            flip = torch.rand(x.shape[0], generator=self.generator, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        mean, std = self.stats
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def labels_for_training(self, labels: torch.Tensor) -> torch.Tensor:
        """Replace each label by "no class" with probability cond_drop_prob (classifier-free guidance)."""
        if self.config.cond_drop_prob <= 0:
            return labels
        drop = torch.rand(labels.shape[0], generator=self.generator, device=labels.device) < self.config.cond_drop_prob
        return torch.where(drop, torch.full_like(labels, self.null_class_label), labels)

    def seed_global_rng(self, global_step: int, micro_batch: int):
        """Seed torch's global RNG (dropout draws from it) from (seed, process, step, micro-batch) alone."""
        key = [self.config.seed, self.accelerator.process_index, global_step, micro_batch]
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))

    def _micro_batch(self, batch: dict, step: int) -> dict:
        """Forward and backward of one batch; the optimiser steps when the accumulation is complete."""
        accelerator = self.accelerator
        self.seed_global_rng(step, self.micro_batch)
        self.micro_batch += 1
        with accelerator.accumulate(self.unet):
            x0 = self.to_model_space(batch["pixel_values"])
            labels = self.labels_for_training(batch["labels"].to(accelerator.device)) if self.use_labels else None
            losses = self.objective(self.unet, self.noise_scheduler, x0, self.generator, labels)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients and self.config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.unet.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.monitor.add(losses, x0.shape[0] * accelerator.num_processes)
        return losses

    def _after_step(self, step: int, position: dict) -> None:
        """Logging, the finiteness check, checkpoints and the callbacks after optimiser step `step`."""
        config = self.config
        if step % config.logging_steps == 0 or step == self.max_train_steps:
            self.monitor.raise_if_not_finite(self.checkpoints.latest())
            logs = {**self.monitor.logs(), "lr": self.lr_scheduler.get_last_lr()[0]}
            self.progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}",
                                      img_s=f"{logs['images_per_second']:.0f}")
            self.accelerator.log(logs, step=step)
        if step % config.checkpointing_steps == 0:
            self.monitor.raise_if_not_finite(self.checkpoints.latest())  # never checkpoint weights a bad step touched
            path = self.save_checkpoint(step, position)
            for callback in self.callbacks:
                callback.on_checkpoint(self, step, path)
        for callback in self.callbacks:
            callback.on_step_end(self, step)

    def _train_epoch(self, epoch: int, step: int, skip_batches: int) -> int:
        """One pass over the data (the first `skip_batches` batches skipped); returns the step reached."""
        self.unet.train()
        self.dataloader.set_epoch(epoch)
        loader = self.accelerator.skip_first_batches(self.dataloader, skip_batches) if skip_batches else self.dataloader
        batches_in_epoch, passed = skip_batches, False
        for batch in loader:
            passed = True
            batches_in_epoch += 1
            self._micro_batch(batch, step)
            if not self.accelerator.sync_gradients:
                continue
            step += 1
            self.micro_batch = 0
            if self.ema is not None:
                self.ema.step(self.unet.parameters())
            self.monitor.end_step(step)
            self.progress.update(1)
            self._after_step(step, {"epoch": epoch, "batches_in_epoch": batches_in_epoch})
            if step >= self.max_train_steps:
                break
        if not passed and not skip_batches:
            raise ConfigError(f"The dataset yielded no batch in epoch {epoch}; it is empty.")
        return step

    def train(self) -> Path:
        accelerator = self.accelerator
        step, epoch, skip_batches = self.resume()
        self.monitor = LossMonitor(accelerator.device)
        self.progress = tqdm(total=self.max_train_steps, initial=step, desc="Training", dynamic_ncols=True,
                             disable=not accelerator.is_local_main_process)
        for callback in self.callbacks:
            callback.on_train_begin(self, step)
        while step < self.max_train_steps:
            step = self._train_epoch(epoch, step, skip_batches)
            skip_batches = 0
            for callback in self.callbacks:
                callback.on_epoch_end(self, epoch, step)
            epoch += 1
        self.progress.close()
        self.monitor.raise_if_not_finite(self.checkpoints.latest())
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.finish(step)
        accelerator.end_training()
        return self.output_dir

    def finish(self, global_step: int):
        """Save the EMA pipeline, its sample grid, a training summary and the model card; push if asked."""
        pipe = self.pipeline()
        self.checkpoints.save_pipeline(pipe, global_step)
        for callback in self.callbacks:
            callback.on_save(self, pipe)
        summary = {
            "global_step": global_step, "training_seconds": round(self.training_seconds(), 1),
            "hardware": self.hardware(), "num_parameters": sum(p.numel() for p in pipe.unet.parameters()),
            "num_train_images": self.images.num_examples,
            "image_mean": self.image_mean, "image_std": self.image_std,
        }
        for callback in self.callbacks:
            summary.update(callback.summary())
        (self.output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_model_card(self.output_dir, self.repo_id if self.config.push_to_hub else None)
        for callback in self.callbacks:
            callback.on_train_end(self, global_step)
