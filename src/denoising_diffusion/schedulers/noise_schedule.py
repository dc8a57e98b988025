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
SPACINGS = ("time", "log_snr", "karras")

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
    stall the device every call, and inside `torch.compile` it would break the graph, so there only the
    dtype is checked.
    """
    if isinstance(timesteps, bool) or (isinstance(timesteps, torch.Tensor) and timesteps.dtype == torch.bool):
        raise TypeError(f"{name} must be {TIME_MEANING}; got a boolean.")
    if isinstance(timesteps, int) or (isinstance(timesteps, torch.Tensor) and not timesteps.is_floating_point()):
        shown = timesteps if isinstance(timesteps, int) else f"a {timesteps.dtype} tensor"
        raise TypeError(f"{name} must be {TIME_MEANING}; got {shown}.")
    if isinstance(timesteps, torch.Tensor):
        if timesteps.device.type != "cpu" or timesteps.numel() == 0 or torch.compiler.is_compiling():
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
      ``acos(min_signal_rate)`` at t=1; ``alpha = cos(angle)``, ``sigma = sin(angle)``.
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
        alpha = torch.exp(0.5 * log_alpha_bar)
        # sqrt(1 - alpha_bar) written with expm1 keeps precision where alpha_bar is close to 1.
        sigma = torch.sqrt(-torch.expm1(log_alpha_bar))
        return alpha, sigma
    raise ValueError(f"Unknown schedule {schedule!r}; expected one of {', '.join(map(repr, SCHEDULES))}.")


def log_snr(t, schedule: str = "cosine", min_signal_rate: float = 0.02, max_signal_rate: float = 0.95) -> torch.Tensor:
    """lambda_t = log(alpha_t / sigma_t), half the log signal-to-noise ratio, for times t in [0, 1].

    Decreasing in t: lambda_0 = log(max_signal_rate / sqrt(1 - max_signal_rate**2)) and
    lambda_1 = log(min_signal_rate / sqrt(1 - min_signal_rate**2)).
    """
    alpha, sigma = signal_noise_rates(t, schedule, min_signal_rate, max_signal_rate)
    return torch.log(alpha) - torch.log(sigma)


def time_from_log_snr(lam, schedule: str = "cosine", min_signal_rate: float = 0.02,
                      max_signal_rate: float = 0.95) -> torch.Tensor:
    """The inverse of `log_snr`: the time t in [0, 1] at which log(alpha_t / sigma_t) == lam."""
    lam = torch.as_tensor(lam)
    lam = lam.to(torch.float64 if lam.dtype == torch.float64 else torch.float32)
    if schedule == "cosine":
        start, end = math.acos(max_signal_rate), math.acos(min_signal_rate)
        angle = torch.atan(torch.exp(-lam))  # cot(angle) = alpha / sigma = e^lambda
        t = (angle - start) / (end - start)
    elif schedule == "linear":
        start, end = _linear_tau(max_signal_rate), _linear_tau(min_signal_rate)
        neg_log_alpha_bar = torch.nn.functional.softplus(-2.0 * lam)  # alpha_bar = sigmoid(2 lambda)
        slope = LINEAR_BETA_MAX - LINEAR_BETA_MIN
        tau = (-LINEAR_BETA_MIN + torch.sqrt(LINEAR_BETA_MIN**2 + 2.0 * slope * neg_log_alpha_bar)) / slope
        t = (tau - start) / (end - start)
    else:
        raise ValueError(f"Unknown schedule {schedule!r}; expected one of {', '.join(map(repr, SCHEDULES))}.")
    return t.clamp(0.0, 1.0)


def _log_snr_ends(schedule: str, min_signal_rate: float, max_signal_rate: float) -> tuple[float, float]:
    """(lambda_0, lambda_1): log(alpha / sigma) at t = 0 and t = 1."""
    ends = log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64), schedule, min_signal_rate, max_signal_rate)
    return float(ends[0]), float(ends[1])


def validate_spacing(timestep_spacing: str, rho: float) -> None:
    """Raise ``ValueError`` naming the bad value when a time spacing configuration is invalid."""
    if timestep_spacing not in SPACINGS:
        raise ValueError(
            f"Unknown timestep_spacing {timestep_spacing!r}; expected one of {', '.join(map(repr, SPACINGS))}."
        )
    if not (isinstance(rho, (int, float)) and not isinstance(rho, bool) and rho > 0 and math.isfinite(rho)):
        raise ValueError(f"rho must be a positive number, got {rho!r}.")


def spaced_time(u, timestep_spacing: str = "time", rho: float = 7.0, schedule: str = "cosine",
                min_signal_rate: float = 0.02, max_signal_rate: float = 0.95) -> torch.Tensor:
    """Map a uniform coordinate u in [0, 1] to a time t in [0, 1] (u = 0 -> t = 0, u = 1 -> t = 1).

    Sampling with N steps evaluates the model at u = 1, (N - 1)/N, ..., 1/N; the spacing decides where
    those times fall:

    * ``"time"``: t = u, uniform in time (the Keras DDIM example and its R/torch port).
    * ``"log_snr"``: uniform in lambda = log(alpha / sigma) (Lu et al. 2022 recommend it for
      DPM-Solver): lambda(u) = lambda_0 + u (lambda_1 - lambda_0).
    * ``"karras"``: Karras et al. (2022, eq. 5) in terms of s = sigma / alpha = e^-lambda:
      s(u) = (s_0^(1/rho) + u (s_1^(1/rho) - s_0^(1/rho)))^rho, rho = 7 by default; small steps
      in s near the data (in lambda its steps grow towards the data).

    Computed in float64.
    """
    u = torch.as_tensor(u, dtype=torch.float64)
    if timestep_spacing == "time":
        return u
    validate_spacing(timestep_spacing, rho)
    lam_0, lam_1 = _log_snr_ends(schedule, min_signal_rate, max_signal_rate)
    if timestep_spacing == "log_snr":
        lam = lam_0 + u * (lam_1 - lam_0)
    else:  # karras
        s_0, s_1 = math.exp(-lam_0 / rho), math.exp(-lam_1 / rho)  # s^(1/rho) at both ends
        lam = -rho * torch.log(s_0 + u * (s_1 - s_0))
    return time_from_log_snr(lam, schedule, min_signal_rate, max_signal_rate)


def spacing_coordinate(t, timestep_spacing: str = "time", rho: float = 7.0, schedule: str = "cosine",
                       min_signal_rate: float = 0.02, max_signal_rate: float = 0.95) -> torch.Tensor:
    """The inverse of `spaced_time`: the uniform coordinate u in [0, 1] of times t (float64)."""
    t = torch.as_tensor(t).to(torch.float64)
    if timestep_spacing == "time":
        return t
    validate_spacing(timestep_spacing, rho)
    lam_0, lam_1 = _log_snr_ends(schedule, min_signal_rate, max_signal_rate)
    lam = log_snr(t, schedule, min_signal_rate, max_signal_rate)
    if timestep_spacing == "log_snr":
        u = (lam - lam_0) / (lam_1 - lam_0)
    else:  # karras
        s_0, s_1 = math.exp(-lam_0 / rho), math.exp(-lam_1 / rho)
        u = (torch.exp(-lam / rho) - s_0) / (s_1 - s_0)
    return u.clamp(0.0, 1.0)
