"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2) in continuous time, over the same signal/noise rates as
`CosineDDIMScheduler`, so it swaps into the same pipeline:

    pipe.scheduler = CosineDPMSolverScheduler.from_config(pipe.scheduler.config)

With alpha_t the signal rate, sigma_t the noise rate and lambda_t = log(alpha_t / sigma_t), a step
from t_{i-1} to t_i (h_i = lambda_{t_i} - lambda_{t_{i-1}}) using data predictions x0_hat is

    first order:  x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) x0_hat_{i-1}
    second order: D   = (1 + 1 / (2 r_i)) x0_hat_{i-1} - 1 / (2 r_i) x0_hat_{i-2},  r_i = h_{i-1} / h_i
                  x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D

The first step is first order (no history yet) and the last step, to t = 0 (alpha = 1,
sigma = 0, lambda = inf), returns the data prediction, as `CosineDDIMScheduler` does.

This module travels with saved pipelines, so it imports only torch, diffusers and its siblings.
"""

import math

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from .noise_schedule import check_times
from .scheduling_cosine_ddim import CosineDDIMScheduler


class CosineDPMSolverScheduler(CosineDDIMScheduler):
    """Multistep DPM-Solver++ (order 1 or 2) for continuous-time models; see the module docstring.

    Args: as `CosineDDIMScheduler` (`clip_sample` clips each data prediction), plus
        solver_order (`int`, defaults to 2): 2 for DPM-Solver++(2M), 1 for DPM-Solver++(1)
            (which equals deterministic DDIM).

    `timestep_spacing="log_snr"` makes every step the same length h in lambda, the setting of Lu et
    al.'s analysis.
    """

    order = 1  # one model evaluation per step (multistep), as diffusers counts it

    @register_to_config
    def __init__(
        self,
        schedule: str = "cosine",
        min_signal_rate: float = 0.02,
        max_signal_rate: float = 0.95,
        prediction_type: str = "epsilon",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        solver_order: int = 2,
        timestep_spacing: str = "log_snr",
        rho: float = 7.0,
    ):
        # By keyword: diffusers records positional arguments as "left at their defaults", and
        # `from_config` would then drop them when switching schedulers.
        super().__init__(schedule=schedule, min_signal_rate=min_signal_rate, max_signal_rate=max_signal_rate,
                         prediction_type=prediction_type, clip_sample=clip_sample, clip_sample_range=clip_sample_range,
                         timestep_spacing=timestep_spacing, rho=rho)
        if solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {solver_order!r}.")
        self._times: list[float] = []  # the inference times, on the host
        self._previous: list[float] = []  # the time each step goes to
        self._step_index = 0
        self._history: list[tuple[torch.Tensor, float]] = []  # (x0_hat, lambda) of earlier steps

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        super().set_timesteps(num_inference_steps, device)
        # Host copies of the times (float32 values, as `timesteps`) and of the time each step goes to
        # (`previous_timestep`: the next one, 0 after the last): each step reads its times here, never
        # from a device tensor (no device syncs).
        steps = torch.arange(num_inference_steps, 0, -1, dtype=torch.float64) / num_inference_steps
        times = self.spaced_time(steps).float()  # computed again on the host: no device read-back
        self._times = times.tolist()
        self._previous = self._times[1:] + [0.0]
        self._step_index = 0
        self._history = []

    def _alpha_sigma(self, t: float) -> tuple[float, float]:
        alpha, sigma = self.signal_noise_rates(torch.tensor(t, dtype=torch.float64))
        return float(alpha), float(sigma)

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator=None,
        variance_noise=None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """One DPM-Solver++ step from `timestep` to the next (less noisy) time.

        Steps must follow `self.timesteps` in order (the solver keeps the previous data prediction).
        `eta`, `use_clipped_model_output`, `generator` and `variance_noise` are accepted for
        interchangeability with `CosineDDIMScheduler` and ignored: this solver is deterministic and
        uses the data prediction only.
        """
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps(num_inference_steps)` before `step()`.")
        if self._step_index >= self.num_inference_steps:
            raise ValueError(
                f"step() was called more than num_inference_steps={self.num_inference_steps} times; "
                "call `set_timesteps` again to start a new sampling run."
            )
        check_times(timestep)
        dtype = sample.dtype
        work = torch.float64 if dtype == torch.float64 else torch.float32
        x = sample.to(work)
        t, prev_t = self._times[self._step_index], self._previous[self._step_index]
        self._step_index += 1
        x0_hat, _ = self.convert_model_output(model_output.to(work), timestep, x)
        if self.config.clip_sample:
            x0_hat = x0_hat.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        if prev_t <= 0:
            prev_sample = x0_hat  # sigma = 0: the data prediction itself
        else:
            (alpha_t, sigma_t), (alpha_s, sigma_s) = self._alpha_sigma(t), self._alpha_sigma(prev_t)
            lam_prev, lam = math.log(alpha_t / sigma_t), math.log(alpha_s / sigma_s)
            h = lam - lam_prev
            if self.config.solver_order == 2 and self._history:
                x0_older, lam_older = self._history[-1]
                r = (lam_prev - lam_older) / h
                d = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_older
            else:
                d = x0_hat
            prev_sample = (sigma_s / sigma_t) * x - alpha_s * math.expm1(-h) * d
            self._history = [(x0_hat, lam_prev)]
        prev_sample, x0_hat = prev_sample.to(dtype), x0_hat.to(dtype)
        if not return_dict:
            return (prev_sample, x0_hat)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0_hat)
