"""What the training loop minimises: an objective maps (network, scheduler, batch) to losses.

The loop calls `objective(unet, scheduler, x0, generator, class_labels)` for every batch and
backpropagates `["loss"]`; the other entries are logged. The objective draws every random number
from `generator`, which the trainer checkpoints, so a resumed run draws what an uninterrupted one
would. Progressive distillation's objective is `distillation.DistillationObjective`.
"""

import math

import torch
import torch.nn.functional as F

from ..models.unet_continuous import pixel_positions
from ..schedulers.noise_schedule import log_snr, time_from_log_snr
from .config import TrainingConfig


class TimeDistribution:
    """Draws the training times t in [0, 1], i.e. which noise levels the network learns most.

    * ``"uniform"``: t ~ U[0, 1] (the Keras DDIM example).
    * ``"log_normal"``: ln(sigma_t / alpha_t) ~ N(p_mean, p_std^2), EDM's training distribution
      (Karras et al. 2022), truncated to the schedule's range and drawn by inverting its CDF (one
      uniform number per image, so a run stays reproducible from its generator).
    """

    def __init__(self, kind: str = "uniform", p_mean: float = -0.5, p_std: float = 1.2, schedule: str = "cosine",
                 min_signal_rate: float = 0.02, max_signal_rate: float = 0.95):
        self.kind, self.p_mean, self.p_std = kind, p_mean, p_std
        self.schedule = (schedule, min_signal_rate, max_signal_rate)
        if kind == "log_normal":
            lam_0, lam_1 = log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64), *self.schedule).tolist()
            normal = torch.distributions.Normal(p_mean, p_std)  # of ln(sigma / alpha) = -lambda
            self.cdf_range = (float(normal.cdf(torch.tensor(-lam_0))), float(normal.cdf(torch.tensor(-lam_1))))

    def sample(self, batch_size: int, generator: torch.Generator, device) -> torch.Tensor:
        """`batch_size` times in [0, 1], float32, on `device`."""
        u = torch.rand(batch_size, generator=generator, device=device)
        if self.kind == "uniform":
            return u
        low, high = self.cdf_range
        u = (low + u.double() * (high - low)).clamp(1e-12, 1 - 1e-12)
        log_sigma = self.p_mean + self.p_std * math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
        return time_from_log_snr(-log_sigma, *self.schedule).float()


class RandomCrops:
    """Patch Diffusion's training crops (Wang et al. 2023, "Patch Diffusion: Faster and More Data-Efficient
    Training of Diffusion Models"): in a `fraction` of the batches (drawn per batch), every image is replaced
    by a random `size` x `size` crop of it, and the network, which has `position_channels`, is told where
    the crop lies in the whole image. A crop costs about (size / resolution)^2 of a whole image, so the
    same wall-clock trains more batches; the whole-image batches teach how the parts fit together.

    `__call__(x0, generator)` returns `(images, positions)`: `x0` (B, C, R, R) and None for a whole-image
    batch, or the crops (B, C, size, size) and their positions (B, 2, size, size) from `pixel_positions`.
    """

    def __init__(self, fraction: float, size: int, resolution: int):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction={fraction} is not valid; expected a value in [0, 1).")
        if not 1 <= size < resolution:
            raise ValueError(f"size={size} is not valid; expected a crop side in [1, {resolution}).")
        self.fraction, self.size, self.resolution = fraction, size, resolution

    def __call__(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        device, batch = x0.device, x0.shape[0]
        if torch.rand(1, generator=generator, device=device).item() >= self.fraction:
            return x0, None
        corners = torch.randint(0, self.resolution - self.size + 1, (batch, 2), generator=generator, device=device)
        span = torch.arange(self.size, device=device)
        rows, cols = corners[:, :1] + span, corners[:, 1:] + span  # (B, size) each
        grid = pixel_positions(self.resolution, self.resolution, self.resolution, device, x0.dtype)
        index = torch.arange(batch, device=device)[:, None, None]
        crops = x0.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        positions = grid.permute(1, 2, 0)[rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        channels_last = not x0.is_contiguous() and x0.is_contiguous(memory_format=torch.channels_last)
        crops = crops.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return crops, positions.contiguous()


class DiffusionObjective:
    """The denoising loss of the Keras DDIM example (Béres 2022) and its R/torch port (Falbel 2023).

    For each image x0 draw one continuous time t (`times`, uniform by default) and noise eps, form
    x_t = alpha_t x0 + sigma_t eps, and penalise the network's estimate of the noise, the image or
    the velocity (`loss_on`) with MAE or MSE (`loss`), whatever the network's `prediction_type`.

    With `self_conditioning`, the network also sees its own clean-image estimate in half of the batches
    (`self_condition`), at the cost of one more forward pass without gradient in those batches.

    With `crops` (`RandomCrops`), some batches are random crops of the images with their positions.

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

    @staticmethod
    def self_condition(unet, scheduler, noisy: torch.Tensor, t: torch.Tensor, generator: torch.Generator,
                       class_labels: torch.Tensor | None, **inputs) -> torch.Tensor | None:
        """Self-conditioning (Chen et al. 2022, Algorithm 1): for half of the batches (drawn from
        `generator`), the network's own clean-image estimate from a first pass without gradient; None
        (zeros, as at the first sampling step) for the others."""
        if torch.rand(1, generator=generator, device=noisy.device).item() >= 0.5:
            return None
        with torch.no_grad():
            first = unet(noisy, t, class_labels=class_labels, **inputs).sample.float()
            estimate, _ = scheduler.convert_model_output(first, t, noisy.float())
        return estimate.to(noisy.dtype)

    def __init__(self, loss: str = "mae", loss_on: str = "noise", snr_gamma: float | None = None,
                 times: TimeDistribution | None = None, self_conditioning: bool = False,
                 crops: RandomCrops | None = None):
        self.loss, self.loss_on, self.snr_gamma = loss, loss_on, snr_gamma
        self.times = times or TimeDistribution()
        self.self_conditioning, self.crops = self_conditioning, crops

    @classmethod
    def from_config(cls, config: TrainingConfig) -> "DiffusionObjective":
        times = TimeDistribution(config.time_distribution, config.p_mean, config.p_std, config.schedule,
                                 config.min_signal_rate, config.max_signal_rate)
        crops = None
        if config.patch_fraction > 0:
            size = config.resolution // 2 if config.patch_crop_size is None else config.patch_crop_size
            crops = RandomCrops(config.patch_fraction, size, config.resolution)
        return cls(config.loss, config.loss_on, config.snr_gamma, times, config.self_conditioning, crops)

    def to(self, device) -> "DiffusionObjective":
        return self

    def __call__(self, unet, scheduler, x0: torch.Tensor, generator: torch.Generator,
                 class_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Losses for one batch x0 (B, C, H, W) in model space; `class_labels` (B,) or None."""
        extra = {}
        if self.crops is not None:
            x0, positions = self.crops(x0, generator)
            if positions is not None:
                extra["positions"] = positions
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = self.times.sample(x0.shape[0], generator, x0.device)
        noisy = scheduler.add_noise(x0, noise, t)
        if self.self_conditioning:
            extra["self_condition"] = self.self_condition(unet, scheduler, noisy, t, generator, class_labels, **extra)
        prediction = unet(noisy, t, class_labels=class_labels, **extra).sample.float()
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
