"""What the training loop minimises: an objective maps (network, scheduler, batch) to losses.

The loop calls `objective(unet, scheduler, x0, generator, class_labels)` for every batch and
backpropagates `["loss"]`; the other entries are logged. The objective draws every random number
from `generator`, which the trainer checkpoints, so a resumed run draws what an uninterrupted one
would. Progressive distillation's objective is `distillation.DistillationObjective`.
"""

import torch
import torch.nn.functional as F

from .config import TrainingConfig


class DiffusionObjective:
    """The denoising loss of the Keras DDIM example (Béres 2022) and its R/torch port (Falbel 2023).

    For each image x0 draw one continuous time t ~ U[0, 1] and noise eps, form
    x_t = alpha_t x0 + sigma_t eps, and penalise the network's estimate of the noise, the image or
    the velocity (`loss_on`) with MAE or MSE (`loss`), whatever the network's `prediction_type`.

    With `snr_gamma`, each image's loss is weighted by Min-SNR-gamma (Hang et al. 2023). For MSE the
    weight is min(SNR, g) in image space, i.e. min(SNR, g) / SNR on the noise, min(SNR, g) on the
    image and min(SNR, g) / (SNR + 1) on the velocity, where SNR = alpha_t^2 / sigma_t^2. MAE errors
    scale with the square root of what MSE errors scale with (|x0 - x0_hat| = |eps - eps_hat| /
    sqrt(SNR), |v - v_hat| = sqrt(SNR + 1) |x0 - x0_hat|), so for MAE each weight is the square root
    of the MSE one: the same clamp of the per-time loss scale at g, stated for absolute errors.

    Besides `loss`, it returns the two diagnostics of the Keras example, whatever the objective:
    `noise_loss` (MAE of the noise estimate) and `image_loss` (MAE of the clean-image estimate).
    """

    distilled_steps = None  # a plain diffusion model samples with any number of steps

    def __init__(self, loss: str = "mae", loss_on: str = "noise", snr_gamma: float | None = None):
        self.loss, self.loss_on, self.snr_gamma = loss, loss_on, snr_gamma

    @classmethod
    def from_config(cls, config: TrainingConfig) -> "DiffusionObjective":
        return cls(config.loss, config.loss_on, config.snr_gamma)

    def to(self, device) -> "DiffusionObjective":
        return self

    def __call__(self, unet, scheduler, x0: torch.Tensor, generator: torch.Generator,
                 class_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Losses for one batch x0 (B, C, H, W) in model space; `class_labels` (B,) or None."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.rand(x0.shape[0], generator=generator, device=x0.device)
        noisy = scheduler.add_noise(x0, noise, t)
        prediction = unet(noisy, t, class_labels=class_labels).sample.float()
        x0_hat, eps_hat = scheduler.convert_model_output(prediction, t, noisy)
        alpha, sigma = scheduler.signal_noise_rates(t, x0)
        if self.loss_on == "noise":
            estimate, target = eps_hat, noise
        elif self.loss_on == "image":
            estimate, target = x0_hat, x0
        else:
            estimate, target = alpha * eps_hat - sigma * x0_hat, scheduler.get_velocity(x0, noise, t)
        loss_fn = F.l1_loss if self.loss == "mae" else F.mse_loss
        if self.snr_gamma is None:
            loss = loss_fn(estimate, target)
        else:
            snr = (alpha / sigma).flatten() ** 2
            clipped = torch.clamp(snr, max=self.snr_gamma)
            weight = {"noise": clipped / snr, "image": clipped, "velocity": clipped / (snr + 1)}[self.loss_on]
            if self.loss == "mae":
                weight = weight.sqrt()
            per_image = loss_fn(estimate, target, reduction="none").flatten(1).mean(1)
            loss = (weight * per_image).mean()
        return {
            "loss": loss,
            "noise_loss": F.l1_loss(eps_hat.detach(), noise),
            "image_loss": F.l1_loss(x0_hat.detach(), x0),
        }
