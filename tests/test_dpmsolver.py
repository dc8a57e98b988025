import math

import pytest
import torch

from denoising_diffusion import CosineDDIMScheduler, CosineDPMSolverScheduler
from test_scheduler import check_oracle_sampling


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 100])
def test_oracle_denoiser_recovers_x0_and_stays_on_the_marginal(prediction_type, schedule, steps):
    check_oracle_sampling(CosineDPMSolverScheduler(schedule=schedule, prediction_type=prediction_type), steps)


def gaussian_data_problem(scheduler, mu=0.7, s=0.5):
    """Data ~ N(mu, s^2): the exact denoiser and the exact probability-flow ODE solution are known.

    Along the ODE, z = (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2) is constant.
    """

    def model(sample, t):
        a, n = scheduler.signal_noise_rates(t)
        x0 = mu + (a * s**2 / (a**2 * s**2 + n**2)) * (sample - a * mu)
        eps = (sample - a * x0) / n
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - n * x0}[scheduler.config.prediction_type]

    def exact(x1, t):
        a1, n1 = scheduler.signal_noise_rates(torch.tensor(1.0, dtype=torch.float64))
        a, n = scheduler.signal_noise_rates(torch.tensor(t, dtype=torch.float64))
        z = (x1 - a1 * mu) / torch.sqrt(a1**2 * s**2 + n1**2)
        return a * mu + torch.sqrt(a**2 * s**2 + n**2) * z

    return model, exact


def solve(scheduler, steps):
    """Max error against the exact ODE solution at the last time, just before the final jump to x0_hat."""
    model, exact = gaussian_data_problem(scheduler)
    x1 = torch.linspace(-3, 3, 101, dtype=torch.float64)
    scheduler.set_timesteps(steps)
    x = x1.clone()
    for t in scheduler.timesteps[:-1]:
        x = scheduler.step(model(x, t.double()), t.double(), x).prev_sample
    return (x - exact(x1, float(scheduler.timesteps[-1]))).abs().max().item()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_second_order_solver_converges_faster_than_ddim(schedule, prediction_type):
    errors = {}
    for name, cls in (("ddim", CosineDDIMScheduler), ("dpm2m", CosineDPMSolverScheduler)):
        errors[name] = {n: solve(cls(schedule=schedule, prediction_type=prediction_type), n) for n in (10, 20, 40, 80)}
    assert errors["dpm2m"][10] < 0.3 * errors["ddim"][10] and errors["dpm2m"][40] < 0.05 * errors["ddim"][40], errors
    # Empirical order: halving the step divides the error by ~2 for DDIM, ~4 for the second-order solver.
    ddim_rate = math.log2(errors["ddim"][40] / errors["ddim"][80])
    dpm_rate = math.log2(errors["dpm2m"][40] / errors["dpm2m"][80])
    assert 0.8 < ddim_rate < 1.3 and dpm_rate > 1.7, (ddim_rate, dpm_rate)  # first vs (at least) second order


def test_first_order_dpmsolver_is_ddim():
    ddim, dpm1 = CosineDDIMScheduler(), CosineDPMSolverScheduler(solver_order=1)
    assert solve(ddim, 7) == pytest.approx(solve(dpm1, 7), abs=1e-9) and solve(ddim, 7) > 1e-3


def test_swaps_into_a_pipeline_from_the_ddim_config_and_round_trips(tmp_path):
    from conftest import tiny_pipeline
    from denoising_diffusion import CosineDDIMPipeline

    pipe = tiny_pipeline()
    pipe.scheduler = CosineDPMSolverScheduler.from_config(pipe.scheduler.config)
    assert isinstance(pipe.scheduler, CosineDPMSolverScheduler) and pipe.scheduler.config.solver_order == 2
    images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 1, 8, 8)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler" / "scheduling_cosine_dpmsolver.py").exists()
    assert (tmp_path / "scheduler" / "scheduling_cosine_ddim.py").exists()  # its base class travels too
    loaded = CosineDDIMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, CosineDPMSolverScheduler)
    again = loaded(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(images, again)
    with pytest.raises(ValueError, match="solver_order must be 1 or 2, got 3"):
        CosineDPMSolverScheduler(solver_order=3)
