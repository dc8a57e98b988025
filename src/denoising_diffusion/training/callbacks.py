"""Periodic work around the training loop, as callbacks: sample grids, KID, Hub pushes, throughput.

The `Trainer` calls each hook of each callback in order; every hook is optional. Callbacks run on
every process (a hook that writes files checks `trainer.accelerator.is_main_process`). What a
callback returns from `state_dict` is stored in each checkpoint and handed back to
`load_state_dict` on resume; what `summary` returns goes into `training_summary.json`.
"""

import logging
import time
from concurrent.futures import Future
from pathlib import Path

import torch

from ..evaluation.features import feature_extractor, resolve_features
from ..evaluation.kid import extract_features, kid_fid
from ..evaluation.scoring import generate
from ..images import image_grid
from ..publishing import PushError, push_folder, retry_command
from .config import ConfigError, TrainingConfig

logger = logging.getLogger(__name__)


class Callback:
    """The hooks, in the order a run calls them. `trainer` is the running `Trainer`."""

    def on_train_begin(self, trainer, step: int) -> None:
        """The loop starts at optimiser step `step` (0, or the resumed checkpoint's)."""

    def on_step_end(self, trainer, step: int) -> None:
        """Optimiser step `step` is done (weights and EMA updated)."""

    def on_checkpoint(self, trainer, step: int, path: Path) -> None:
        """`checkpoint-STEP` was written to `path`."""

    def on_epoch_end(self, trainer, epoch: int, step: int) -> None:
        """Epoch `epoch` (from 0) ended at step `step`."""

    def on_save(self, trainer, pipe) -> None:
        """Main process: the final EMA pipeline `pipe` was saved in `trainer.output_dir`."""

    def on_train_end(self, trainer, step: int) -> None:
        """Main process: the summary and the model card are written; the run is over."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def summary(self) -> dict:
        return {}


class SampleGrids(Callback):
    """A grid of samples from fixed noise every `every` steps (`samples/step-STEP.png`, and in
    TensorBoard), and `samples.png` beside the saved pipeline."""

    def __init__(self, every: int, latents: torch.Tensor, num_inference_steps: int):
        self.every, self.latents, self.num_inference_steps = every, latents, num_inference_steps

    def images(self, pipe) -> torch.Tensor:
        """The grid's images (N, C, H, W) in [0, 1], from the fixed noise."""
        return pipe(latents=self.latents, num_inference_steps=self.num_inference_steps, output_type="pt").images

    def on_step_end(self, trainer, step: int) -> None:
        if step % self.every or not trainer.accelerator.is_main_process:
            return
        images = self.images(trainer.pipeline())
        path = trainer.output_dir / "samples" / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images).save(path)
        for tracker in trainer.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images("samples", images.cpu().numpy(), step)

    def on_save(self, trainer, pipe) -> None:
        image_grid(self.images(pipe)).save(trainer.output_dir / "samples.png")


class KIDEvaluation(Callback):
    """KID/FID of the EMA pipeline's samples against the training images every `eval_every_epochs`
    epochs (main process only). The feature network and the real images' features are prepared when
    it is built, so a missing network fails before training."""

    def __init__(self, config: TrainingConfig, real_pixels: torch.Tensor, device, num_inference_steps: int):
        self.config, self.num_inference_steps = config, num_inference_steps
        name = resolve_features(config.eval_features, config.dataset_name, config.train_data_dir)
        try:
            self.features = feature_extractor(name, config.inception_weights).to(device)
        except RuntimeError as error:
            raise ConfigError(f"eval_every_epochs={config.eval_every_epochs} needs KID features: {error}") from error
        self.real_features = extract_features(real_pixels.float() / 255.0, self.features)
        self.history = []

    def on_epoch_end(self, trainer, epoch: int, step: int) -> None:
        if (epoch + 1) % self.config.eval_every_epochs or not trainer.accelerator.is_main_process:
            return
        fake, _ = generate(trainer.pipeline(), self.config.eval_num_samples, self.num_inference_steps,
                           seed=self.config.seed)
        scores = kid_fid(self.real_features, extract_features(fake, self.features))
        trainer.accelerator.log(scores, step=step)
        self.history.append({"epoch": epoch + 1, "step": step, **scores})
        trainer.write(f"epoch {epoch + 1}: KID {scores['kid']:.4f} ± {scores['kid_std']:.4f}, FID {scores['fid']:.2f}")

    def state_dict(self) -> dict:
        return {"kid_history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = state.get("kid_history", [])

    def summary(self) -> dict:
        return {"kid_history": self.history} if self.history else {}


class HubPushes(Callback):
    """`--push_to_hub`: each checkpoint's EMA pipeline in the background (`hub_push_checkpoints`),
    then the final folder. A failed checkpoint push is reported with its retry command once the
    final push has been tried; every local file is kept."""

    def __init__(self, config: TrainingConfig, repo_id: str):
        self.config, self.repo_id = config, repo_id
        self.futures = []  # (folder, Future) of background checkpoint pushes

    def on_checkpoint(self, trainer, step: int, path: Path) -> None:
        if not self.config.hub_push_checkpoints or not trainer.accelerator.is_main_process:
            return
        folder = path / "pipeline"
        trainer.pipeline().save_pretrained(folder)
        try:
            future = push_folder(folder, self.repo_id, private=self.config.hub_private_repo or None,
                                 token=self.config.hub_token, commit_message=f"Checkpoint {step}", run_as_future=True)
        except PushError as error:  # a checkpoint push never stops training: reported with the others at the end
            future = Future()
            future.set_exception(error)
        self.futures.append((folder, future))

    def on_train_end(self, trainer, step: int) -> None:
        private = self.config.hub_private_repo or None
        failed = []
        for folder, future in self.futures:
            try:
                future.result()
            except Exception as error:  # noqa: BLE001 - reported with its retry command; the final push goes on
                failed.append(f"{folder} ({type(error).__name__}: {error}); retry with: "
                              f"{retry_command(folder, self.repo_id, private)}")
        for line in failed:
            logger.warning("A checkpoint push failed: %s", line)
        info = push_folder(trainer.output_dir, self.repo_id, private=private, token=self.config.hub_token)
        trainer.accelerator.print(f"Pushed to {info.commit_url}")
        if failed:
            raise PushError(f"{len(failed)} checkpoint push(es) failed; every local file is kept. " + " ".join(failed))


class Throughput(Callback):
    """Training images/s after a warm-up of `warmup_steps` optimiser steps (start-up, compilation and
    allocation excluded), measured up to the last step (`train_images_per_second` in the summary)."""

    def __init__(self, images_per_step: int, max_train_steps: int, device, warmup_steps: int = 20):
        self.images_per_step, self.max_train_steps, self.device = images_per_step, max_train_steps, device
        self.warmup_steps = warmup_steps
        self.warm_step = self.warm_clock = self.images_per_second = None

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_begin(self, trainer, step: int) -> None:
        self.warm_step = step + self.warmup_steps

    def on_step_end(self, trainer, step: int) -> None:
        if step == self.warm_step:
            self.warm_clock = self._clock()
        elif step == self.max_train_steps and self.warm_clock is not None:
            images = (step - self.warm_step) * self.images_per_step
            self.images_per_second = images / (self._clock() - self.warm_clock)

    def summary(self) -> dict:
        return {} if self.images_per_second is None else {"train_images_per_second": round(self.images_per_second, 2)}
