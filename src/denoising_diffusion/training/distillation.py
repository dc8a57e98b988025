"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", Algorithm 2), in the continuous time of `CosineDDIMScheduler`.

A student sampled with N DDIM steps learns to do in one step what its teacher does in two. With
the scheduler's N-step times (u = i/N of its `timestep_spacing`; the 2N-step times add the
midpoints u = (i - 1/2)/N), for an image x and noise eps at t = t(i/N):

    z_t      = alpha_t x + sigma_t eps
    z_t'     = DDIM step of the teacher from t to t' = t((i - 1/2)/N)
    z_t''    = DDIM step of the teacher from t' to t'' = t((i - 1)/N)   (t'' = 0 for i = 1: the data)
    x_target = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

x_target is the clean estimate with which one student DDIM step from z_t lands exactly on z_t''. The
loss is the paper's "truncated SNR" weighting, max(SNR_t, 1) * ||x_hat - x_target||^2, i.e.
max(||x - x_hat||^2, ||eps - eps_hat||^2) (SNR = alpha^2 / sigma^2), which stays finite at t = 1.
The paper recommends a student that predicts `v` (or x), not eps, whose clean estimate degenerates
at high noise.

This module holds the math and the objective; `rounds` runs the rounds (round k's teacher is round
k-1's student), each one a normal training run with checkpoints, exact resume, EMA and logging.
"""

import torch
import torch.nn.functional as F

from ..models.unet_continuous import ContinuousUNet2DModel
from ..schedulers.scheduling_cosine_ddim import CosineDDIMScheduler
from .config import ConfigError, TrainingConfig


def ddim_step(x0_hat: torch.Tensor, z: torch.Tensor, rates_from, rates_to) -> torch.Tensor:
    """Deterministic DDIM from z (at rates_from = (alpha, sigma)) to rates_to, given the clean estimate."""
    (alpha_s, sigma_s), (alpha_t, sigma_t) = rates_from, rates_to
    eps_hat = (z - alpha_s * x0_hat) / sigma_s
    return alpha_t * x0_hat + sigma_t * eps_hat


def clean_estimate(unet, scheduler, z: torch.Tensor, t: torch.Tensor, class_labels=None) -> torch.Tensor:
    """The model's x0 estimate at (z, t), whatever it predicts (float32)."""
    output = unet(z, t, class_labels=class_labels).sample.float()
    x0_hat, _ = scheduler.convert_model_output(output, t, z.float())
    return x0_hat


def student_times(scheduler, i: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For step indices i in 1..n (B,): the student's time t = t(i/n), the teacher's midpoint
    t' = t((i - 1/2)/n) and the end t'' = t((i - 1)/n), float32 like `scheduler.timesteps`."""
    u = i.double() / n
    return tuple(scheduler.spaced_time(u - shift / n).float() for shift in (0.0, 0.5, 1.0))


@torch.no_grad()
def teacher_target(teacher_unet, teacher_scheduler, scheduler, z: torch.Tensor, i: torch.Tensor, n: int,
                   class_labels=None) -> torch.Tensor:
    """x_target: the clean estimate with which one student DDIM step from z at t(i/n) lands where two
    teacher DDIM steps (t -> t' -> t'') land. z is (B, C, H, W) in model space, i (B,) in 1..n."""
    t, t_mid, t_end = student_times(scheduler, i, n)
    rates = scheduler.signal_noise_rates(t, z)
    rates_mid = scheduler.signal_noise_rates(t_mid, z)
    alpha_end, sigma_end = scheduler.signal_noise_rates(t_end, z)
    last = (i == 1).reshape(alpha_end.shape)  # the last step ends at the data itself: alpha = 1, sigma = 0
    alpha_end = torch.where(last, torch.ones_like(alpha_end), alpha_end)
    sigma_end = torch.where(last, torch.zeros_like(sigma_end), sigma_end)
    z = z.float()
    x0_teacher = clean_estimate(teacher_unet, teacher_scheduler, z, t, class_labels)
    z_mid = ddim_step(x0_teacher, z, rates, rates_mid)
    x0_teacher = clean_estimate(teacher_unet, teacher_scheduler, z_mid, t_mid, class_labels)
    z_end = ddim_step(x0_teacher, z_mid, rates_mid, (alpha_end, sigma_end))
    ratio = sigma_end / rates[1]
    return (z_end - ratio * z) / (alpha_end - ratio * rates[0])


def distillation_losses(student, scheduler, teacher_unet, teacher_scheduler, x0: torch.Tensor, student_steps: int,
                        generator: torch.Generator, class_labels=None) -> dict[str, torch.Tensor]:
    """The distillation loss for a batch x0 (B, C, H, W) in model space, and the diagnostics of the
    diffusion objective (`noise_loss`, `image_loss`).

    `scheduler` is the student's (its `prediction_type` and `timestep_spacing` define the times), the
    teacher's scheduler reads the teacher's output. Times are drawn on the student's N-step grid.
    """
    n = student_steps
    i = torch.randint(1, n + 1, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    t = student_times(scheduler, i, n)[0]
    alpha, sigma = scheduler.signal_noise_rates(t, x0)
    z = alpha * x0 + sigma * noise
    target = teacher_target(teacher_unet, teacher_scheduler, scheduler, z, i, n, class_labels)
    prediction = student(z, t, class_labels=class_labels).sample.float()
    x0_hat, eps_hat = scheduler.convert_model_output(prediction, t, z)
    weight = torch.clamp((alpha / sigma).flatten() ** 2, min=1.0)  # truncated SNR: max(SNR, 1)
    per_image = F.mse_loss(x0_hat, target, reduction="none").flatten(1).mean(1)
    return {
        "loss": (weight * per_image).mean(),
        "noise_loss": F.l1_loss(eps_hat.detach(), noise),
        "image_loss": F.l1_loss(x0_hat.detach(), x0),
    }


def check_teacher(teacher, config: TrainingConfig) -> None:
    """The data must fit the teacher's UNet; raise ConfigError naming what differs."""
    unet = teacher.unet.config
    size = unet.sample_size if isinstance(unet.sample_size, int) else unet.sample_size[0]
    if size != config.resolution or unet.in_channels != config.channels:
        raise ConfigError(
            f"The teacher {config.teacher!r} works on {unet.in_channels} channel(s) at {size}x{size}, but the config "
            f"has channels={config.channels}, resolution={config.resolution}; set them to the teacher's."
        )
    if unet.num_class_embeds is not None and config.label_column is None:
        raise ConfigError(f"The teacher {config.teacher!r} is class-conditional; set label_column to the class column.")
    if unet.get("self_conditioning", False):
        raise ConfigError(f"The teacher {config.teacher!r} is self-conditioned (self_conditioning); progressive "
                          "distillation takes teachers without it.")
    if config.patch_fraction:
        raise ConfigError(f"patch_fraction={config.patch_fraction}: progressive distillation trains on whole images; "
                          "set patch_fraction: 0.")


class DistillationObjective:
    """`distillation_losses` against `teacher` (a `CosineDDIMPipeline`) for a student sampled with
    `student_steps` DDIM steps, in the form the training loop calls (see `objectives`)."""

    def __init__(self, teacher, student_steps: int):
        self.teacher, self.distilled_steps = teacher, student_steps
        self.teacher.unet.eval().requires_grad_(False)

    def to(self, device) -> "DistillationObjective":
        self.teacher.unet.to(device)
        return self

    def __call__(self, unet, scheduler, x0: torch.Tensor, generator: torch.Generator,
                 class_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return distillation_losses(unet, scheduler, self.teacher.unet, self.teacher.scheduler, x0,
                                   self.distilled_steps, generator, class_labels)


def student_start(teacher, prediction_type: str):
    """The student's first weights and its scheduler: a copy of the teacher's UNet, and the teacher's
    schedule and time spacing (the student is sampled on the same times) with `prediction_type`."""
    unet = ContinuousUNet2DModel.from_config(teacher.unet.config)
    unet.load_state_dict(teacher.unet.state_dict())
    scheduler = CosineDDIMScheduler.from_config(teacher.scheduler.config, prediction_type=prediction_type)
    return unet, scheduler
