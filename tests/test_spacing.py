"""Where the sampling times fall: `timestep_spacing` ("time", "log_snr", "karras") for both schedulers."""

import math

import pytest
import torch

from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler, CosineDPMSolverScheduler
from denoising_diffusion.schedulers.noise_schedule import (
    SPACINGS,
    log_snr,
    spaced_time,
    spacing_coordinate,
    time_from_log_snr,
)
from test_dpmsolver import solve
from test_scheduler import check_oracle_sampling

SCHEDULERS = [CosineDDIMScheduler, CosineDPMSolverScheduler]
SCHEDULE_SETTINGS = [{"schedule": "cosine"}, {"schedule": "linear"},
                     {"schedule": "cosine", "min_signal_rate": 0.1, "max_signal_rate": 0.8}]


@pytest.mark.parametrize("settings", SCHEDULE_SETTINGS)
def test_time_from_log_snr_inverts_log_snr(settings):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    lam = log_snr(t, **settings)
    assert (lam[1:] < lam[:-1]).all()  # decreasing: later times are noisier
    torch.testing.assert_close(time_from_log_snr(lam, **settings), t, rtol=0, atol=1e-9)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("settings", SCHEDULE_SETTINGS)
def test_spacing_maps_ends_to_ends_and_is_inverted_by_its_coordinate(spacing, settings):
    u = torch.linspace(0, 1, 51, dtype=torch.float64)
    t = spaced_time(u, spacing, 7.0, **settings)
    assert float(t[0]) == pytest.approx(0.0, abs=1e-9) and float(t[-1]) == pytest.approx(1.0, abs=1e-9)
    assert (t[1:] > t[:-1]).all()
    torch.testing.assert_close(spacing_coordinate(t, spacing, 7.0, **settings), u, rtol=0, atol=1e-9)


@pytest.mark.parametrize("settings", SCHEDULE_SETTINGS)
@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda c: c.__name__)
def test_each_spacing_is_uniform_in_its_own_coordinate(cls, settings):
    n = 12
    times = {}
    for spacing in SPACINGS:
        scheduler = cls(timestep_spacing=spacing, **settings)
        scheduler.set_timesteps(n)
        ts = scheduler.timesteps.double()
        assert len(ts) == n and float(ts[0]) == pytest.approx(1.0, abs=1e-6) and (ts[1:] < ts[:-1]).all()
        assert float(ts[-1]) > 0
        times[spacing] = ts
    steps = torch.arange(n, 0, -1, dtype=torch.float64) / n
    torch.testing.assert_close(times["time"], steps, rtol=0, atol=1e-7)
    lam = log_snr(times["log_snr"], **settings)
    assert torch.diff(lam).std() < 1e-5 * torch.diff(lam).abs().mean()  # equal steps in log(alpha / sigma)
    s = torch.exp(-log_snr(times["karras"], **settings) / 7.0)  # (sigma / alpha)^(1 / rho)
    assert torch.diff(s).std() < 1e-5 * torch.diff(s).abs().mean()
    # In log-SNR, the Karras spacing's steps grow towards the data (uniform in (sigma / alpha)^(1/7)).
    steps_k = torch.diff(log_snr(times["karras"], **settings))
    assert (steps_k[1:] > steps_k[:-1]).all()


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda c: c.__name__)
def test_previous_timestep_is_the_next_time_and_zero_at_the_end(cls, spacing):
    scheduler = cls(timestep_spacing=spacing, schedule="linear")
    scheduler.set_timesteps(7)
    ts = scheduler.timesteps.tolist()
    prev = [float(scheduler.previous_timestep(t)) for t in scheduler.timesteps]
    assert prev[-1] == 0.0
    assert prev[:-1] == ts[1:]  # exactly the next time: the sample lands where the model is evaluated next
    # Off the grid, a step moves 1/N along the spacing's coordinate.
    off = 0.5 * (ts[2] + ts[3])
    u = spacing_coordinate(torch.tensor(off, dtype=torch.float64), spacing, 7.0, "linear")
    expected = spaced_time(u - 1 / 7, spacing, 7.0, "linear")
    assert float(scheduler.previous_timestep(torch.tensor(off))) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("spacing", ["log_snr", "karras"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("steps", [1, 2, 5, 20])
def test_oracle_denoiser_recovers_x0_with_every_spacing(cls, spacing, prediction_type, steps):
    check_oracle_sampling(cls(timestep_spacing=spacing, prediction_type=prediction_type), steps)


@pytest.mark.parametrize("spacing", ["time", "karras"])  # log_snr, the default: test_dpmsolver.py
def test_solvers_keep_their_order_of_convergence_with_other_spacings(spacing):
    errors = {name: [solve(cls(timestep_spacing=spacing), n) for n in (20, 40, 80)]
              for name, cls in (("ddim", CosineDDIMScheduler), ("dpm", CosineDPMSolverScheduler))}
    ddim_rate = math.log2(errors["ddim"][1] / errors["ddim"][2])
    dpm_rate = math.log2(errors["dpm"][1] / errors["dpm"][2])
    assert 0.8 < ddim_rate < 1.3 and dpm_rate > 1.7, (errors, ddim_rate, dpm_rate)


@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda c: c.__name__)
def test_uniform_log_snr_steps_make_the_schedule_irrelevant(cls):
    # Both solvers depend on the times only through (alpha, sigma), i.e. lambda; with times uniform in
    # lambda between the same end rates, the cosine and linear schedules give the same steps.
    errors = [solve(cls(schedule=schedule, timestep_spacing="log_snr"), 8) for schedule in ("cosine", "linear")]
    assert errors[0] == pytest.approx(errors[1], rel=1e-6) and errors[0] > 1e-4
    uniform = [solve(cls(schedule=schedule, timestep_spacing="time"), 8) for schedule in ("cosine", "linear")]
    assert uniform[0] != pytest.approx(uniform[1], rel=1e-2)


@pytest.mark.parametrize("bad", [{"timestep_spacing": "trailing"}, {"timestep_spacing": "karras", "rho": 0},
                                 {"rho": -1.0}, {"rho": float("nan")}])
@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda c: c.__name__)
def test_bad_spacing_settings_are_rejected_naming_the_value(cls, bad):
    (key, value), = [(k, v) for k, v in bad.items() if k != "timestep_spacing" or v == "trailing"]
    with pytest.raises(ValueError, match=f"{key}.*{value!r}" if key == "timestep_spacing" else "rho must be"):
        cls(**bad)


@pytest.mark.parametrize("source", SCHEDULERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("target", SCHEDULERS, ids=lambda c: c.__name__)
def test_spacing_survives_scheduler_swaps_and_saving(source, target, tmp_path):
    switched = target.from_config(source(timestep_spacing="karras", rho=5.0).config)
    assert switched.config.timestep_spacing == "karras" and switched.config.rho == 5.0
    switched.save_pretrained(tmp_path)
    loaded = target.from_pretrained(tmp_path)
    loaded.set_timesteps(6)
    switched.set_timesteps(6)
    assert torch.equal(loaded.timesteps, switched.timesteps)


def test_pipeline_samples_with_the_chosen_spacing(tmp_path):
    from conftest import tiny_pipeline

    pipe = tiny_pipeline()
    images = {}
    for spacing in SPACINGS:
        pipe.scheduler = CosineDPMSolverScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)
        images[spacing] = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                               output_type="pt").images
    # tiny_pipeline's output conv is randomised, so the model's prediction depends on the times it sees.
    assert not torch.equal(images["time"], images["log_snr"]) and not torch.equal(images["log_snr"], images["karras"])
    pipe.save_pretrained(tmp_path)
    loaded = CosineDDIMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.config.timestep_spacing == "karras"
    again = loaded(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(again, images["karras"])
