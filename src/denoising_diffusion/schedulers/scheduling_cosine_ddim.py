"""Continuous-time DDIM (Song, Meng & Ermon 2020) over a cosine or linear signal/noise schedule.

Notation, per sample at continuous time t in [0, 1]:

    x_t = alpha_t * x_0 + sigma_t * eps,    alpha_t**2 + sigma_t**2 = 1

``alpha_t`` is the *signal rate* and ``sigma_t`` the *noise rate* (``alpha_t**2`` is DDPM's
alpha-bar). One DDIM step from t to s < t with stochasticity ``eta``:

    eta_sigma = eta * (sigma_s / sigma_t) * sqrt(1 - alpha_t**2 / alpha_s**2)
    x_s = alpha_s * x0_hat + sqrt(sigma_s**2 - eta_sigma**2) * eps_hat + eta_sigma * z

eta = 0 is deterministic DDIM, eta = 1 the DDPM posterior variance. The step that ends at t = 0
returns the clean estimate ``x0_hat`` (alpha = 1, as diffusers' DDIMScheduler with
``set_alpha_to_one=True`` and the Keras DDIM example).

This module travels with saved pipelines, so it imports only torch, diffusers and its sibling
``noise_schedule``.
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .noise_schedule import (
    check_times,
    signal_noise_rates,
    spaced_time,
    spacing_coordinate,
    validate_schedule,
    validate_spacing,
)

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class CosineDDIMScheduler(SchedulerMixin, ConfigMixin):
    """DDIM sampler in continuous time, for models conditioned on a time t in [0, 1].

    Args:
        schedule (`str`, defaults to `"cosine"`): `"cosine"` or `"linear"` (see `noise_schedule`).
        min_signal_rate (`float`, defaults to 0.02): signal rate at t = 1 (the noisiest input).
        max_signal_rate (`float`, defaults to 0.95): signal rate at t = 0 (the cleanest input).
        prediction_type (`str`, defaults to `"epsilon"`): what the model predicts: the noise
            (`"epsilon"`), the clean sample (`"sample"`) or the velocity
            `v = alpha_t * eps - sigma_t * x_0` (`"v_prediction"`).
        clip_sample (`bool`, defaults to False): clip the predicted clean sample to
            `[-clip_sample_range, clip_sample_range]` at every step, as diffusers' `DDIMScheduler`
            (off, as in the Keras DDIM example: samples live in the model's standardised space, not in [-1, 1]).
        clip_sample_range (`float`, defaults to 1.0): the bound used by `clip_sample`.
        timestep_spacing (`str`, defaults to `"log_snr"`): where the `num_inference_steps` times fall
            (see `noise_schedule.spaced_time`): `"log_snr"` (uniform in log(alpha / sigma), the
            measured best for few steps, `benchmarks/solvers.py`), `"time"` (uniform in t, the Keras DDIM example's)
            or `"karras"` (Karras et al.'s rho-spacing of sigma / alpha). It only matters for
            sampling; any spacing works with any model.
        rho (`float`, defaults to 7.0): the exponent of the `"karras"` spacing.

    Times are continuous, so there is no `num_train_timesteps`: a model trained with diffusers'
    `torch.randint(0, scheduler.config.num_train_timesteps, ...)` would see wrong noise levels, and
    integer or out-of-range times are rejected with an error instead.
    """

    _compatibles = ["CosineDDIMScheduler", "CosineDPMSolverScheduler"]
    order = 1

    @register_to_config
    def __init__(
        self,
        schedule: str = "cosine",
        min_signal_rate: float = 0.02,
        max_signal_rate: float = 0.95,
        prediction_type: str = "epsilon",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "log_snr",
        rho: float = 7.0,
    ):
        validate_schedule(schedule, min_signal_rate, max_signal_rate)
        validate_spacing(timestep_spacing, rho)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"Unknown prediction_type {prediction_type!r}; expected one of {', '.join(map(repr, PREDICTION_TYPES))}."
            )
        if not clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be positive, got {clip_sample_range!r}.")
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.tensor([1.0])

    @classmethod
    def _get_compatibles(cls):
        """The schedulers this one's config can be swapped into with `from_config` (`scheduler.compatibles`).

        diffusers' own lookup searches only the diffusers package; these classes are found among
        `CosineDDIMScheduler` and its subclasses instead.
        """
        family, pending = {}, [CosineDDIMScheduler]
        while pending:
            klass = pending.pop()
            family.setdefault(klass.__name__, klass)
            pending.extend(klass.__subclasses__())
        return [family[name] for name in dict.fromkeys([cls.__name__, *cls._compatibles]) if name in family]

    def signal_noise_rates(self, timesteps, sample: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(signal_rate, noise_rate)`, i.e. `(alpha_t, sigma_t)`, for continuous times `timesteps` in [0, 1].

        Without `sample`: tensors of `timesteps`' shape. With `sample` (B, C, H, W): on its device, in
        float32 (float64 for a float64 sample), shaped to broadcast over it, i.e. (B, 1, 1, 1) for one
        time per sample or 0-d for one time for all.
        """
        if sample is None:
            return signal_noise_rates(
                timesteps, self.config.schedule, self.config.min_signal_rate, self.config.max_signal_rate
            )
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        t = torch.as_tensor(timesteps, device=sample.device, dtype=dtype)
        alpha, sigma = self.signal_noise_rates(t)
        shape = (-1,) + (1,) * (sample.ndim - 1) if t.ndim == 1 else ()
        return alpha.reshape(shape), sigma.reshape(shape)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity, for interchangeability with schedulers that scale the model input."""
        return sample

    def spaced_time(self, u) -> torch.Tensor:
        """The time t in [0, 1] at coordinate u in [0, 1] of `timestep_spacing` (float64, u's device).

        `set_timesteps(N)` takes the times at u = 1, 1 - 1/N, ..., 1/N, so the N-step times are every
        other one of the 2N-step times (what progressive distillation relies on)."""
        config = self.config
        return spaced_time(u, config.timestep_spacing, config.rho, config.schedule, config.min_signal_rate,
                           config.max_signal_rate)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        """Set `timesteps` to `num_inference_steps` descending times in (0, 1], starting at 1.

        They are the times at u = 1, 1 - 1/N, ..., 1/N of the configured `timestep_spacing`
        (with `"time"`: t = 1, 1 - 1/N, ..., 1/N); the last step goes to t = 0, the data.
        """
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}.")
        self.num_inference_steps = num_inference_steps
        steps = torch.arange(num_inference_steps, 0, -1, dtype=torch.float64) / num_inference_steps
        self.timesteps = self.spaced_time(steps).to(device=device, dtype=torch.float32)

    def previous_timestep(self, timestep) -> torch.Tensor:
        """The time one inference step after `timestep` (0 for the last step), as float64.

        A step moves 1/N along the spacing's uniform coordinate u. For a time of `timesteps` this is
        exactly the next one in `timesteps` (float32 values), so the sample lands where the model is
        evaluated next; any other time moves by 1/N in u. Computed on `timestep`'s device, no lookup.
        """
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps(num_inference_steps)` before `step()`.")
        config, n = self.config, self.num_inference_steps
        u = spacing_coordinate(timestep, config.timestep_spacing, config.rho, config.schedule,
                               config.min_signal_rate, config.max_signal_rate)
        k = torch.round(u * n)
        on_grid = (u * n - k).abs() < 1e-3  # float32 times give u * n within ~1e-5 of an integer
        target = torch.where(on_grid, (k - 1) / n, u - 1.0 / n)
        prev = self.spaced_time(target.clamp(min=0.0)).float().double()
        # Anything under half a step is the end: the data, t = 0.
        return torch.where(target < 0.5 / n, torch.zeros_like(prev), prev)

    def _step_rates(self, timesteps, sample: torch.Tensor):
        """`signal_noise_rates` where t = 0 means the end of sampling: the clean data (alpha = 1, sigma = 0),
        not the training bound `max_signal_rate`."""
        alpha, sigma = self.signal_noise_rates(timesteps, sample)
        at_end = torch.as_tensor(timesteps, device=sample.device).reshape(alpha.shape) <= 0
        return torch.where(at_end, torch.ones_like(alpha), alpha), torch.where(at_end, torch.zeros_like(sigma), sigma)

    def convert_model_output(
        self, model_output: torch.Tensor, timestep, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn a model output into `(pred_original_sample, pred_epsilon)` at time `timestep`."""
        alpha, sigma = self.signal_noise_rates(timestep, sample)
        kind = self.config.prediction_type
        if kind == "epsilon":
            pred_epsilon = model_output
            pred_original_sample = (sample - sigma * pred_epsilon) / alpha
        elif kind == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - alpha * pred_original_sample) / sigma
        elif kind == "v_prediction":
            pred_original_sample = alpha * sample - sigma * model_output
            pred_epsilon = alpha * model_output + sigma * sample
        else:
            raise ValueError(f"Unknown prediction_type {kind!r}; expected one of {PREDICTION_TYPES}.")
        return pred_original_sample, pred_epsilon

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """One DDIM step from `timestep` to the previous (less noisy) time.

        Args:
            model_output (`torch.Tensor`): the model's prediction, shape (B, C, H, W).
            timestep (`float` or `torch.Tensor`): the current continuous time t in [0, 1], one of
                `self.timesteps`.
            sample (`torch.Tensor`): the current noisy sample x_t, shape (B, C, H, W).
            eta (`float`): 0 for deterministic DDIM, 1 for the DDPM posterior variance.
            use_clipped_model_output (`bool`, defaults to False): with `clip_sample`, re-derive the
                noise estimate from the clipped clean estimate (as diffusers' `DDIMScheduler`); without
                clipping it changes nothing.
            generator: random generator(s) for the noise added when `eta > 0`.
            variance_noise (`torch.Tensor`, optional): that noise given directly instead.

        Returns:
            `DDIMSchedulerOutput(prev_sample, pred_original_sample)` or a tuple of both. The
            computation runs in float32 (float64 stays float64); outputs take `sample`'s dtype.
        """
        dtype = sample.dtype
        work = torch.float64 if dtype == torch.float64 else torch.float32
        x_t, model_output = sample.to(work), model_output.to(work)
        check_times(timestep)
        prev_t = self.previous_timestep(timestep)

        pred_original_sample, pred_epsilon = self.convert_model_output(model_output, timestep, x_t)
        alpha_t, sigma_t = self.signal_noise_rates(timestep, x_t)
        alpha_s, sigma_s = self._step_rates(prev_t, x_t)
        if self.config.clip_sample:
            bound = self.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-bound, bound)
            if use_clipped_model_output:
                pred_epsilon = (x_t - alpha_t * pred_original_sample) / sigma_t

        # eta_sigma = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)  (DDIM eq. 16)
        eta_sigma = eta * (sigma_s / sigma_t) * torch.sqrt((1.0 - alpha_t**2 / alpha_s**2).clamp(min=0.0))
        direction = torch.sqrt((sigma_s**2 - eta_sigma**2).clamp(min=0.0)) * pred_epsilon
        prev_sample = alpha_s * pred_original_sample + direction

        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                )
            prev_sample = prev_sample + eta_sigma * variance_noise.to(work)

        prev_sample, pred_original_sample = prev_sample.to(dtype), pred_original_sample.to(dtype)
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Forward diffusion q(x_t | x_0): `alpha_t * original_samples + sigma_t * noise`.

        `timesteps` is a continuous time per sample (shape (B,)) or one for all (scalar).
        """
        check_times(timesteps, "timesteps")
        alpha, sigma = self.signal_noise_rates(timesteps, original_samples)
        out = alpha * original_samples.to(alpha.dtype) + sigma * noise.to(alpha.dtype)
        return out.to(original_samples.dtype)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The v-prediction target `alpha_t * noise - sigma_t * sample` (Salimans & Ho 2022)."""
        check_times(timesteps, "timesteps")
        alpha, sigma = self.signal_noise_rates(timesteps, sample)
        return (alpha * noise.to(alpha.dtype) - sigma * sample.to(alpha.dtype)).to(sample.dtype)
