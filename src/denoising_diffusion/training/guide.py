"""The autoguidance guide a run makes for itself: an early snapshot of its own EMA weights.

Autoguidance (Karras et al. 2024) steers a model away from what a weaker version of itself gets
wrong: `guide + w (main - guide)`. The paper's guides are smaller and trained for a fraction of the
main model's time; the cheapest guide of that kind is the same network, earlier in the same run.
`GuideSnapshot` copies the EMA weights (the raw weights without EMA) when step
`round(fraction * max_train_steps)` ends. That costs no training: one copy of the weights in memory,
in every later checkpoint (`guide_unet.safetensors`, so a resumed run ends with the same guide) and
in the saved pipeline (`guide_unet/`).
"""

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..models.unet_continuous import ContinuousUNet2DModel
from .callbacks import Callback
from .checkpoints import GUIDE_FILE, checkpoint_step
from .config import ConfigError


class GuideSnapshot(Callback):
    """Takes the guide at optimiser step `step` of a run of `max_train_steps` (see the module docstring)."""

    def __init__(self, fraction: float, max_train_steps: int):
        self.step = max(1, round(fraction * max_train_steps))
        self.max_train_steps = max_train_steps
        self.weights: dict[str, torch.Tensor] | None = None  # the guide's state dict, on the CPU

    @property
    def info(self) -> dict:
        """Where the guide comes from, as the pipeline config and the model card state it."""
        return {"kind": "ema_snapshot", "step": self.step, "of_steps": self.max_train_steps}

    def take(self, trainer) -> None:
        """Copy the run's current EMA weights (or raw weights without EMA) as the guide."""
        unet = trainer.accelerator.unwrap_model(trainer.unet)
        copy = ContinuousUNet2DModel.from_config(unet.config)
        copy.load_state_dict(unet.state_dict())
        if trainer.ema is not None:
            trainer.ema.copy_to(copy.parameters())
        self.weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in copy.state_dict().items()}

    def _reached(self, trainer, step: int) -> None:
        if step == self.step and self.weights is None:
            self.take(trainer)

    # A checkpoint at the snapshot's own step must hold it: `on_checkpoint` runs before `on_step_end`.
    def on_checkpoint(self, trainer, step: int, path: Path) -> None:
        self._reached(trainer, step)
        if self.weights is not None and trainer.accelerator.is_main_process:
            save_file(self.weights, str(path / GUIDE_FILE))

    def on_step_end(self, trainer, step: int) -> None:
        self._reached(trainer, step)

    def check_resume(self, checkpoint: Path | None) -> None:
        """Refuse, before anything is written, a checkpoint past the guide's step that does not hold it."""
        if checkpoint is None or checkpoint_step(checkpoint) < self.step:
            return
        if not (Path(checkpoint) / GUIDE_FILE).exists():
            raise ConfigError(f"{checkpoint} is past the guide's step {self.step} but holds no {GUIDE_FILE}: it was "
                              "written by a run without guide=ema_snapshot; resume without it, or train anew.")

    def on_train_begin(self, trainer, step: int) -> None:
        """On resume, the guide the checkpoint holds (when it was taken before the checkpoint)."""
        if trainer.resume_path is not None and step >= self.step:
            self.weights = load_file(str(Path(trainer.resume_path) / GUIDE_FILE))

    def unet(self, like: ContinuousUNet2DModel) -> ContinuousUNet2DModel | None:
        """The guide as a model shaped like `like` (on its device, eval mode), or None before it is taken."""
        if self.weights is None:
            return None
        guide = ContinuousUNet2DModel.from_config(like.config)
        guide.load_state_dict(self.weights)
        return guide.to(like.device).eval()

    def summary(self) -> dict:
        return {"guide": self.info}
