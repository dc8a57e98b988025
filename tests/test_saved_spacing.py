"""`sampling.timestep_spacing`: the step spacing a trained pipeline's scheduler is saved with."""

import pytest
import torch

from denoising_diffusion import CosineDDIMPipeline, CosineDPMSolverScheduler
from denoising_diffusion.training import ConfigError, parse_config, train
from test_training import TINY


def config(tmp_path, sampling: str, *extra):
    return parse_config(TINY + ["--output_dir", str(tmp_path / "run"), "--max_train_steps", "2",
                                "--sampling", sampling, *extra])


def test_a_bad_spacing_is_named_with_the_ones_there_are(tmp_path):
    with pytest.raises(ConfigError, match=r"sampling.timestep_spacing='uniform' is not valid; expected one of "
                                          r"\('time', 'log_snr', 'karras'\)"):
        config(tmp_path, '{"scheduler": "dpm_solver", "timestep_spacing": "uniform"}')


def test_the_saved_scheduler_takes_the_spacing_and_the_card_says_it(tmp_path):
    from denoising_diffusion.publishing import render_model_card

    out = train(config(tmp_path, '{"scheduler": "dpm_solver", "timestep_spacing": "time", "num_inference_steps": 3}'))
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, CosineDPMSolverScheduler) and pipe.scheduler.config.timestep_spacing == "time"
    assert pipe.config.sampling_defaults == {"num_inference_steps": 3}  # a scheduler setting, not a call default
    pipe.scheduler.set_timesteps(3)
    uniform = torch.tensor([1.0, 2 / 3, 1 / 3], dtype=pipe.scheduler.timesteps.dtype)  # t = u for `time`
    torch.testing.assert_close(pipe.scheduler.timesteps, uniform)
    card = render_model_card(out).text
    assert "the defaults: `pipe(batch_size=4)` | DPM-Solver++(2M) (steps uniform in t), 3 steps" in card


def test_a_spacing_alone_is_saved_and_the_cards_sampler_advice_names_it(tmp_path):
    from denoising_diffusion.publishing import render_model_card

    out = train(config(tmp_path, '{"timestep_spacing": "karras"}'))
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert type(pipe.scheduler).__name__ == "CosineDDIMScheduler" and pipe.scheduler.config.timestep_spacing == "karras"
    assert not pipe.config.sampling_defaults  # nothing else stored: pipe() as ever, on Karras et al.'s times
    card = render_model_card(out).text
    assert "The sampling times follow Karras et al.'s spacing (`timestep_spacing=\"karras\"`, saved with this" in card


def test_without_it_the_scheduler_keeps_the_log_snr_default(tmp_path):
    from denoising_diffusion.publishing import render_model_card

    out = train(config(tmp_path, '{"scheduler": "dpm_solver", "num_inference_steps": 3}'))
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.timestep_spacing == "log_snr"
    card = render_model_card(out).text
    assert "| DPM-Solver++(2M), 3 steps |" in card and "uniform in t" not in card
