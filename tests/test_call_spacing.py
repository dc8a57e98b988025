"""The step spacing of one call: `pipe(..., timestep_spacing=...)` and the stored
`sampling_defaults["with_class_labels"]["timestep_spacing"]`, so that a class-conditional pipeline can
sample `pipe()` on one spacing and `pipe(class_labels=...)` on another, with one saved scheduler."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from denoising_diffusion import CosineDDIMPipeline, CosineDPMSolverScheduler
from denoising_diffusion.pipelines.guidance import STEP_SPACINGS, check_sampling_defaults
from denoising_diffusion.schedulers.noise_schedule import SPACINGS
from denoising_diffusion.training import ConfigError, parse_config, train
from test_class_defaults import class_pipeline, run
from test_training import TINY

DEFAULTS = {"num_inference_steps": 3, "class_prior": [1.0, 1.0, 1.0],
            "with_class_labels": {"guidance_scale": 2.0, "autoguidance_scale": 1.0, "timestep_spacing": "time"}}


class RecordTimes:
    """The times t a module's forward passes were called at."""

    def __init__(self, module):
        self.times = []
        module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.times.append(round(float(torch.as_tensor(t).reshape(-1)[0]), 5))


def test_the_spacings_the_pipeline_checks_are_the_schedulers():
    assert set(STEP_SPACINGS) == set(SPACINGS)


def test_a_call_given_class_labels_steps_on_its_stored_spacing_and_leaves_the_scheduler_alone():
    pipe = class_pipeline(DEFAULTS)  # a DDIM scheduler with the default log-SNR spacing
    assert pipe.scheduler.config.timestep_spacing == "log_snr"
    times = RecordTimes(pipe.unet)
    asked = run(pipe, class_labels=[0, 2])
    assert times.times == [1.0, 0.66667, 0.33333]  # uniform in t, not the scheduler's log-SNR times
    assert pipe.scheduler.config.timestep_spacing == "log_snr"

    # the same images as the argument spelled out, and as the scheduler swapped by hand
    torch.testing.assert_close(asked, run(pipe, class_labels=[0, 2], timestep_spacing="time"), rtol=0, atol=0)
    # an argument wins over the stored default, and the spacing changes the images
    on_log_snr = run(pipe, class_labels=[0, 2], timestep_spacing="log_snr")
    assert not torch.allclose(asked, on_log_snr, atol=1e-3)
    saved = pipe.scheduler
    pipe.scheduler = type(saved).from_config(saved.config, timestep_spacing="time")
    torch.testing.assert_close(asked, run(pipe, class_labels=[0, 2]), rtol=0, atol=0)
    torch.testing.assert_close(on_log_snr, run(pipe, class_labels=[0, 2], timestep_spacing="log_snr"), rtol=0, atol=0)
    pipe.scheduler = saved

    times.times.clear()
    run(pipe)  # classes drawn, not given: the scheduler's own spacing
    pipe.scheduler.set_timesteps(3)
    assert times.times == [round(float(t), 5) for t in pipe.scheduler.timesteps]
    assert times.times != [1.0, 0.66667, 0.33333]


def test_the_call_argument_works_without_stored_defaults_and_for_the_dpm_solver():
    pipe = class_pipeline({"num_inference_steps": 4})
    pipe.scheduler = CosineDPMSolverScheduler.from_config(pipe.scheduler.config)
    times = RecordTimes(pipe.unet)
    karras = run(pipe, timestep_spacing="karras")
    pipe.scheduler = CosineDPMSolverScheduler.from_config(pipe.scheduler.config, timestep_spacing="karras")
    pipe.scheduler.set_timesteps(4)
    assert times.times == [round(float(t), 5) for t in pipe.scheduler.timesteps]
    torch.testing.assert_close(karras, run(pipe), rtol=0, atol=0)


def test_the_spacing_decides_which_steps_a_guidance_interval_guides():
    interval = {"guidance_scale": 3.0, "autoguidance_scale": 1.0, "guidance_interval": [0.0, 1.0]}
    pipe = class_pipeline({"num_inference_steps": 6, "with_class_labels": interval})
    counts = {}
    for spacing in ("time", "log_snr"):
        scheduler = pipe.sampling_scheduler(spacing, class_labels_given=True)
        scheduler.set_timesteps(6)
        guided = sum(pipe.noise_level(t) <= 1.0 for t in scheduler.timesteps)
        counts[spacing] = pipe.network_evaluations(class_labels=True, timestep_spacing=spacing)
        assert counts[spacing] == 6 + guided
    assert counts["time"] != counts["log_snr"]


def test_bad_spacings_are_named():
    with pytest.raises(ValueError, match=r"sampling_defaults with_class_labels timestep_spacing must be one of "
                                         r"\['time', 'log_snr', 'karras'\], got 'uniform'"):
        check_sampling_defaults({"with_class_labels": {"timestep_spacing": "uniform"}})
    with pytest.raises(ValueError, match=r"Unknown sampling_defaults \['timestep_spacing'\]"):
        check_sampling_defaults({"timestep_spacing": "time"})  # the scheduler's own spacing serves pipe()
    with pytest.raises(ValueError, match=r"timestep_spacing must be one of \['time', 'log_snr', 'karras'\], got 'linear'"):
        run(class_pipeline(), timestep_spacing="linear")


PLAIN_DIFFUSERS = """
import torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({path!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(5), output_type="pt", class_labels=[0, 2]).images
torch.save(images, {out!r})
"""


def test_the_stored_spacing_is_saved_and_loaded_by_the_package_and_by_plain_diffusers(tmp_path):
    pipe = class_pipeline(DEFAULTS)
    expected = run(pipe, class_labels=[0, 2])
    pipe.save_pretrained(tmp_path / "model")
    loaded = CosineDDIMPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.sampling_defaults["with_class_labels"]["timestep_spacing"] == "time"
    torch.testing.assert_close(run(loaded, class_labels=[0, 2]), expected, rtol=0, atol=0)

    out = tmp_path / "plain.pt"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    code = textwrap.dedent(PLAIN_DIFFUSERS.format(path=str(tmp_path / "model"), out=str(out)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(out), expected, rtol=0, atol=0)


def test_a_training_config_stores_it_and_the_card_names_both_spacings(tmp_path):
    from denoising_diffusion.publishing import render_model_card

    sampling = ('{"scheduler": "dpm_solver", "timestep_spacing": "time", "num_inference_steps": 3, '
                '"with_class_labels": {"guidance_scale": 2.0, "timestep_spacing": "log_snr"}}')
    base = TINY + ["--output_dir", str(tmp_path / "run"), "--max_train_steps", "2", "--label_column", "label"]
    with pytest.raises(ConfigError, match="with_class_labels timestep_spacing must be one of"):
        parse_config(base + ["--sampling", sampling.replace('"log_snr"', '"uniform"')])
    out = train(parse_config(base + ["--sampling", sampling]))
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.timestep_spacing == "time"
    assert pipe.config.sampling_defaults["with_class_labels"]["timestep_spacing"] == "log_snr"
    card = render_model_card(out).text
    assert "| DPM-Solver++(2M) (steps uniform in t), 3 steps" in card
    assert "| DPM-Solver++(2M) (steps uniform in log-SNR), 3 steps, classifier-free guidance 2 |" in card
