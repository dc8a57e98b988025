import math

import pytest
import torch
from diffusers import DDIMScheduler

from denoising_diffusion import CosineDDIMScheduler
from denoising_diffusion.schedulers.noise_schedule import signal_noise_rates


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_rates_are_variance_preserving_bounded_and_monotone(schedule):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    signal, noise = signal_noise_rates(t, schedule, 0.02, 0.95)
    torch.testing.assert_close(signal**2 + noise**2, torch.ones_like(t), atol=1e-12, rtol=0)
    assert signal[0].item() == pytest.approx(0.95, abs=1e-9)
    assert signal[-1].item() == pytest.approx(0.02, abs=1e-9)
    assert torch.all(signal[1:] < signal[:-1])


def test_cosine_schedule_angle_is_linear_in_time():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    signal, noise = signal_noise_rates(t, "cosine", 0.1, 0.9)
    angle = torch.atan2(noise, signal)
    expected = math.acos(0.9) + t * (math.acos(0.1) - math.acos(0.9))
    torch.testing.assert_close(angle, expected)


def test_linear_schedule_is_ddpm_linear_betas_in_continuous_time():
    # Between the bounds, d(-log alpha_bar)/d tau must grow linearly (beta(tau) = b0 + (b1 - b0) tau).
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    signal, _ = signal_noise_rates(t, "linear", 0.02, 0.95)
    neg_log_abar = -2 * torch.log(signal)
    second_diff = neg_log_abar[2:] - 2 * neg_log_abar[1:-1] + neg_log_abar[:-2]
    torch.testing.assert_close(second_diff, second_diff[0].expand_as(second_diff))  # quadratic in t
    assert second_diff[0] > 0


@pytest.mark.parametrize("spacing", ["time", "log_snr", "karras"])
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_set_timesteps_descending_from_one(n, spacing):
    scheduler = CosineDDIMScheduler(timestep_spacing=spacing)
    scheduler.set_timesteps(n)
    ts = scheduler.timesteps
    assert ts.dtype == torch.float32 and ts.shape == (n,)
    assert ts[0].item() == 1.0
    assert torch.all(ts[1:] < ts[:-1]) and ts[-1].item() > 0
    if spacing == "time":  # uniform in t: 1, 1 - 1/n, ..., 1/n
        torch.testing.assert_close(ts, torch.arange(n, 0, -1, dtype=torch.float32) / n)


def test_default_spacing_is_uniform_in_log_snr():
    # The measured best for few steps (benchmarks/solvers.py): equal steps in log(alpha / sigma).
    scheduler = CosineDDIMScheduler()
    assert scheduler.config.timestep_spacing == "log_snr"
    scheduler.set_timesteps(10)
    signal, noise = scheduler.signal_noise_rates(scheduler.timesteps.double())
    lam = torch.log(signal / noise)
    torch.testing.assert_close(torch.diff(lam), torch.full((9,), float(lam[1] - lam[0]), dtype=torch.float64),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_set_timesteps_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match=f"num_inference_steps must be an integer >= 1, got {bad!r}"):
        CosineDDIMScheduler().set_timesteps(bad)


def test_bad_configuration_errors_name_the_value():
    with pytest.raises(ValueError, match="Unknown schedule 'quadratic'.*'cosine', 'linear'"):
        CosineDDIMScheduler(schedule="quadratic")
    with pytest.raises(ValueError, match="min_signal_rate=0.9 and max_signal_rate=0.5"):
        CosineDDIMScheduler(min_signal_rate=0.9, max_signal_rate=0.5)
    with pytest.raises(ValueError, match="min_signal_rate=0.5 and max_signal_rate=0.5"):
        CosineDDIMScheduler(min_signal_rate=0.5, max_signal_rate=0.5)
    with pytest.raises(ValueError, match="Unknown prediction_type 'noise'"):
        CosineDDIMScheduler(prediction_type="noise")


def oracle(scheduler, x0):
    """A perfect denoiser: the model output that corresponds to the true x0 at the sample's time."""

    def model(sample, t):
        signal, noise = scheduler.signal_noise_rates(t)
        eps = (sample - signal * x0) / noise
        return {"epsilon": eps, "sample": x0, "v_prediction": signal * eps - noise * x0}[
            scheduler.config.prediction_type
        ]

    return model


def check_oracle_sampling(scheduler, steps: int, eta: float = 0.0):
    """Sample with a perfect denoiser: every x0 prediction is x0, the result is x0, and (deterministic
    sampling) every intermediate sample lies on the forward marginal with the starting noise."""
    g = torch.Generator().manual_seed(steps)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    model = oracle(scheduler, x0)
    scheduler.set_timesteps(steps)
    sample = scheduler.add_noise(x0, eps0, torch.ones(3, dtype=torch.float64))
    for t in scheduler.timesteps:
        t = t.double()
        out = scheduler.step(model(sample, t), t, sample, eta=eta, generator=g)
        torch.testing.assert_close(out.pred_original_sample, x0)
        prev_t = scheduler.previous_timestep(t)
        if eta == 0.0 and prev_t > 0:
            signal, noise = scheduler.signal_noise_rates(prev_t)
            torch.testing.assert_close(out.prev_sample, signal * x0 + noise * eps0)
        sample = out.prev_sample
    torch.testing.assert_close(sample, x0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 100])
def test_oracle_denoiser_recovers_x0(prediction_type, eta, schedule, steps):
    check_oracle_sampling(CosineDDIMScheduler(schedule=schedule, prediction_type=prediction_type), steps, eta)


def _matching_diffusers_ddim(scheduler, prediction_type):
    """diffusers' DDIMScheduler on a 1000-step grid whose alphas_cumprod[k] is ours at t=(k+1)/1000."""
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    signal, _ = scheduler.signal_noise_rates(t)
    abar = signal**2
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return DDIMScheduler(
        num_train_timesteps=1000, trained_betas=betas.numpy(), clip_sample=False, set_alpha_to_one=True,
        steps_offset=0, timestep_spacing="trailing", prediction_type=prediction_type,
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_step_matches_diffusers_ddim_on_a_common_grid(prediction_type, schedule, eta):
    # With times uniform in t, our grid is diffusers' "trailing" grid on 1000 steps.
    ours = CosineDDIMScheduler(schedule=schedule, prediction_type=prediction_type, timestep_spacing="time")
    theirs = _matching_diffusers_ddim(ours, prediction_type)
    steps = 10
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == [round(t * 1000) - 1 for t in ours.timesteps.tolist()]
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 4, 4, generator=g)
    for t_ours, t_theirs in zip(ours.timesteps, theirs.timesteps):
        model_output = torch.randn(2, 3, 4, 4, generator=g)
        noise = torch.randn(2, 3, 4, 4, generator=g)
        a = ours.step(model_output, t_ours, sample, eta=eta, variance_noise=noise)
        b = theirs.step(model_output, t_theirs, sample, eta=eta, variance_noise=noise)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, atol=1e-5, rtol=1e-5)
        sample = a.prev_sample


def test_add_noise_uses_one_time_per_sample_and_velocity_matches_definition():
    scheduler = CosineDDIMScheduler()
    x0, eps = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    t = torch.tensor([0.0, 0.5, 1.0])
    noisy = scheduler.add_noise(x0, eps, t)
    for i in range(3):
        signal, noise = scheduler.signal_noise_rates(t[i])
        torch.testing.assert_close(noisy[i], signal * x0[i] + noise * eps[i])
    v = scheduler.get_velocity(x0, eps, t)
    v_scheduler = CosineDDIMScheduler(prediction_type="v_prediction")
    x0_hat, eps_hat = v_scheduler.convert_model_output(v, t, noisy)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=1e-5)


def test_stochastic_step_is_reproducible_with_a_generator_and_varies_without():
    scheduler = CosineDDIMScheduler()
    scheduler.set_timesteps(5)
    sample, out = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = scheduler.timesteps[1]
    a = scheduler.step(out, t, sample, eta=1.0, generator=torch.Generator().manual_seed(3)).prev_sample
    b = scheduler.step(out, t, sample, eta=1.0, generator=torch.Generator().manual_seed(3)).prev_sample
    c = scheduler.step(out, t, sample, eta=1.0, generator=torch.Generator().manual_seed(4)).prev_sample
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_diffusers_scheduler_api(tmp_path):
    scheduler = CosineDDIMScheduler(schedule="linear", min_signal_rate=0.05, max_signal_rate=0.9)
    assert scheduler.init_noise_sigma == 1.0 and scheduler.order == 1
    # Continuous time: no integer grid to draw training timesteps from by mistake.
    assert "num_train_timesteps" not in scheduler.config
    x = torch.randn(1, 1, 2, 2)
    assert scheduler.scale_model_input(x, 0.5) is x
    scheduler.save_pretrained(tmp_path)
    loaded = CosineDDIMScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    with pytest.raises(ValueError, match="set_timesteps"):
        CosineDDIMScheduler().step(x, 1.0, x)
    scheduler.set_timesteps(2)
    prev_sample, pred_x0 = scheduler.step(x, 1.0, x, return_dict=False)
    assert prev_sample.shape == pred_x0.shape == x.shape
