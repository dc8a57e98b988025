"""Continuous-time noise schedules: diffusion time t in [0, 1] -> (signal rate, noise rate).

A sample at time t is ``x_t = signal_rate(t) * x_0 + noise_rate(t) * eps`` with
``signal_rate**2 + noise_rate**2 == 1`` (variance preserving). In DDPM notation
``signal_rate**2`` is alpha-bar (``alphas_cumprod``) and ``noise_rate**2`` is the noise variance.

Both schedules are kept inside ``[min_signal_rate, max_signal_rate]``: t = 0 gives
``max_signal_rate`` and t = 1 gives ``min_signal_rate``, so the network never sees a perfectly
clean or a perfectly pure-noise input (Keras DDIM example; Nichol & Dhariwal 2021).

This module is self-contained (torch and math only) because it travels with saved pipelines.
"""

import math

import torch

SCHEDULES = ("cosine", "linear")

# DDPM's linear betas (1e-4 to 0.02 over 1000 steps) as the continuous VP-SDE of Song et al. (2021):
# beta(tau) = BETA_MIN + tau * (BETA_MAX - BETA_MIN), alpha_bar(tau) = exp(-int_0^tau beta).
LINEAR_BETA_MIN = 1e-4 * 1000
LINEAR_BETA_MAX = 0.02 * 1000


def validate_schedule(schedule: str, min_signal_rate: float, max_signal_rate: float) -> None:
    """Raise ``ValueError`` naming the bad value when a schedule configuration is invalid."""
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; expected one of {', '.join(map(repr, SCHEDULES))}.")
    if not 0.0 < min_signal_rate < max_signal_rate < 1.0:
        raise ValueError(
            f"Signal rates must satisfy 0 < min_signal_rate < max_signal_rate < 1, got "
            f"min_signal_rate={min_signal_rate} and max_signal_rate={max_signal_rate}."
        )


TIME_MEANING = (
    "a continuous diffusion time t in [0, 1] (0: the cleanest input, 1: pure noise), as a float or a "
    "floating-point tensor. diffusers' integer timesteps (0..num_train_timesteps - 1) do not apply: draw "
    "training times with torch.rand(batch_size) and sample with the scheduler's own `timesteps`"
)


def check_times(timesteps, name: str = "timestep") -> None:
    """Raise when `timesteps` are not continuous times in [0, 1].

    Integer and boolean dtypes are always rejected (the usual slip is diffusers' integer timesteps).
    Values are checked for Python numbers and CPU tensors; on an accelerator, reading them back would
    stall the device every call, so there only the dtype is checked.
    """
    if isinstance(timesteps, bool) or (isinstance(timesteps, torch.Tensor) and timesteps.dtype == torch.bool):
        raise TypeError(f"{name} must be {TIME_MEANING}; got a boolean.")
    if isinstance(timesteps, int) or (isinstance(timesteps, torch.Tensor) and not timesteps.is_floating_point()):
        shown = timesteps if isinstance(timesteps, int) else f"a {timesteps.dtype} tensor"
        raise TypeError(f"{name} must be {TIME_MEANING}; got {shown}.")
    if isinstance(timesteps, torch.Tensor):
        if timesteps.device.type != "cpu" or timesteps.numel() == 0:
            return
        low, high = float(timesteps.min()), float(timesteps.max())
    else:
        low = high = float(timesteps)
    if not (0.0 <= low and high <= 1.0):  # also catches NaN
        bad = low if not 0.0 <= low else high
        raise ValueError(f"{name} must be {TIME_MEANING}; got a value of {bad:g}.")


def _linear_tau(signal_rate: float) -> float:
    """Time tau of the unbounded linear (VP-SDE) schedule at which alpha_bar(tau) == signal_rate**2."""
    neg_log_alpha_bar = -2.0 * math.log(signal_rate)
    slope = LINEAR_BETA_MAX - LINEAR_BETA_MIN
    return (-LINEAR_BETA_MIN + math.sqrt(LINEAR_BETA_MIN**2 + 2.0 * slope * neg_log_alpha_bar)) / slope


def signal_noise_rates(
    t: torch.Tensor, schedule: str = "cosine", min_signal_rate: float = 0.02, max_signal_rate: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(signal_rate, noise_rate)`` for continuous times ``t`` (any shape, values in [0, 1]).

    * ``"cosine"``: the angle moves linearly from ``acos(max_signal_rate)`` at t=0 to
      ``acos(min_signal_rate)`` at t=1; ``signal = cos(angle)``, ``noise = sin(angle)``.
    * ``"linear"``: DDPM's linear beta schedule in continuous time, ``alpha_bar(tau) =
      exp(-(b0 tau + (b1 - b0) tau^2 / 2))`` with b0 = 0.1, b1 = 20, where t in [0, 1] is mapped
      linearly onto the tau range whose signal rates are ``[max_signal_rate, min_signal_rate]``.

    Computed in float32 (float64 inputs stay float64).
    """
    t = torch.as_tensor(t)
    t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    if schedule == "cosine":
        start, end = math.acos(max_signal_rate), math.acos(min_signal_rate)
        angle = start + t * (end - start)
        return torch.cos(angle), torch.sin(angle)
    if schedule == "linear":
        start, end = _linear_tau(max_signal_rate), _linear_tau(min_signal_rate)
        tau = start + t * (end - start)
        log_alpha_bar = -(LINEAR_BETA_MIN * tau + 0.5 * (LINEAR_BETA_MAX - LINEAR_BETA_MIN) * tau**2)
        signal = torch.exp(0.5 * log_alpha_bar)
        # sqrt(1 - alpha_bar) written with expm1 keeps precision where alpha_bar is close to 1.
        noise = torch.sqrt(-torch.expm1(log_alpha_bar))
        return signal, noise
    raise ValueError(f"Unknown schedule {schedule!r}; expected one of {', '.join(map(repr, SCHEDULES))}.")
