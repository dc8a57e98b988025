"""The training loss as the loop watches it: running means for the logs, and non-finite steps."""

import time
from pathlib import Path

import torch

LOGGED_LOSSES = ("loss", "noise_loss", "image_loss")  # what every objective returns


class LossMonitor:
    """Running means of the logged losses, and the first step whose loss was not finite, kept on the
    device so that nothing waits for it until `logs()` or `raise_if_not_finite()` reads it back."""

    def __init__(self, device):
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)
        self.step_bad = torch.zeros((), dtype=torch.bool, device=device)
        self._reset(device)

    def _reset(self, device):
        self.sums = {k: torch.zeros((), device=device) for k in LOGGED_LOSSES}
        self.count, self.images, self.clock = 0, 0, time.perf_counter()

    def add(self, losses: dict, images: int) -> None:
        """One micro-batch's losses, without a sync."""
        self.step_bad |= ~torch.isfinite(losses["loss"].detach())
        for key in self.sums:
            self.sums[key] += losses[key].detach()
        self.count += 1
        self.images += images

    def end_step(self, step: int) -> None:
        self.first_bad = torch.where((self.first_bad == 0) & self.step_bad, torch.full_like(self.first_bad, step),
                                     self.first_bad)
        self.step_bad = torch.zeros_like(self.step_bad)

    def logs(self) -> dict:
        """The means since the last call and the images/s, then a fresh start."""
        elapsed = time.perf_counter() - self.clock
        logs = {k: (v / self.count).item() for k, v in self.sums.items()}
        logs["images_per_second"] = self.images / max(elapsed, 1e-9)
        self._reset(self.first_bad.device)
        return logs

    def raise_if_not_finite(self, latest: Path | None) -> None:
        bad = int(self.first_bad.item())
        if bad:
            raise FloatingPointError(
                f"The loss became NaN or infinite at step {bad}; training stopped. "
                f"The last good checkpoint is {str(latest) if latest else 'none (no checkpoint was written yet)'}."
            )
