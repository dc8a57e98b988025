"""Stored defaults for calls that ask for a class: `sampling_defaults["with_class_labels"]`.

A class-conditional pipeline may store one set of defaults for `pipe()` (classes drawn from
`class_prior`, say autoguided) and another for `pipe(class_labels=...)` (say stronger classifier-free
guidance and no autoguidance). These tests pin which set each kind of call uses, that explicit arguments
still win, that the nested set is checked and survives every way of saving and loading, and that the
trainer, the model card and the quality study use it."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import tiny_unet
from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler
from denoising_diffusion.pipelines.guidance import check_sampling_defaults
from denoising_diffusion.training import ConfigError, parse_config, train
from test_autoguidance import CountCalls, guided_pipeline
from test_training import ROOT, TINY

DEFAULTS = {"num_inference_steps": 4, "autoguidance_scale": 2.0, "class_prior": [1.0, 1.0, 1.0],
            "with_class_labels": {"num_inference_steps": 3, "guidance_scale": 3.0, "autoguidance_scale": 1.0}}


def class_pipeline(defaults=DEFAULTS):
    pipe = guided_pipeline(num_class_embeds=4, sampling_defaults=defaults)  # 3 classes + "no class"
    with torch.no_grad():
        pipe.unet.class_embedding.weight.mul_(5)  # make classes matter in an untrained model
    return pipe


def run(pipe, **kwargs):
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(5), output_type="pt", **kwargs).images


def test_a_call_given_class_labels_uses_the_with_class_labels_defaults():
    pipe = class_pipeline()
    main, guide = CountCalls(pipe.unet), CountCalls(pipe.guide_unet)
    asked = run(pipe, class_labels=[0, 2])
    assert (main.calls, guide.calls) == (3, 0)  # 3 steps, cond + uncond in one batch, no autoguidance
    spelled = run(pipe, class_labels=[0, 2], num_inference_steps=3, guidance_scale=3.0, autoguidance_scale=1.0)
    torch.testing.assert_close(asked, spelled, rtol=0, atol=0)
    top_level = run(pipe, class_labels=[0, 2], num_inference_steps=4, guidance_scale=1.0, autoguidance_scale=2.0)
    assert not torch.allclose(asked, top_level)
    assert pipe.network_evaluations(class_labels=True) == 6 and pipe.inference_steps(class_labels_given=True) == 3

    # an argument given to the call wins; the rest still come from the nested defaults
    torch.testing.assert_close(run(pipe, class_labels=[0, 2], guidance_scale=1.5),
                               run(pipe, class_labels=[0, 2], num_inference_steps=3, guidance_scale=1.5,
                                   autoguidance_scale=1.0), rtol=0, atol=0)
    assert pipe.network_evaluations(guidance_scale=1.0, class_labels=True) == 3


def test_calls_without_class_labels_or_with_only_no_class_keep_the_top_level_defaults():
    pipe = class_pipeline()
    main, guide = CountCalls(pipe.unet), CountCalls(pipe.guide_unet)
    drawn = run(pipe)  # classes drawn from class_prior, autoguidance 2, 4 steps
    assert (main.calls, guide.calls) == (4, 4)
    torch.testing.assert_close(drawn, run(pipe, num_inference_steps=4, autoguidance_scale=2.0), rtol=0, atol=0)
    assert pipe.network_evaluations() == 8 and pipe.network_evaluations(class_labels=False) == 8
    null = pipe.null_class_label  # "no class" asks for no class: the unconditional samples, autoguided as before
    for no_class in (null, [null, null], torch.tensor([null, null])):
        torch.testing.assert_close(run(pipe, class_labels=no_class),
                                   run(pipe, class_labels=null, num_inference_steps=4, autoguidance_scale=2.0,
                                       guidance_scale=1.0), rtol=0, atol=0)
    # a mix of a class and "no class" asks for a class
    torch.testing.assert_close(run(pipe, class_labels=[0, null]),
                               run(pipe, class_labels=[0, null], num_inference_steps=3, guidance_scale=3.0,
                                   autoguidance_scale=1.0), rtol=0, atol=0)


def test_keys_missing_from_with_class_labels_fall_back_to_the_top_level_ones():
    pipe = class_pipeline({"num_inference_steps": 4, "guidance_interval": [0.5, None],
                           "with_class_labels": {"guidance_scale": 2.0}})
    assert pipe.inference_steps(class_labels_given=True) == 4
    assert pipe.call_defaults(class_labels_given=True) == {"num_inference_steps": 4, "guidance_interval": [0.5, None],
                                                            "guidance_scale": 2.0}
    assert pipe.call_defaults() == {"num_inference_steps": 4, "guidance_interval": [0.5, None]}
    torch.testing.assert_close(run(pipe, class_labels=1),
                               run(pipe, class_labels=1, num_inference_steps=4, guidance_scale=2.0,
                                   guidance_interval=(0.5, float("inf"))), rtol=0, atol=0)
    guided_steps = sum(pipe.noise_level(t) > 0.5 for t in pipe.scheduler.timesteps)
    assert pipe.network_evaluations(class_labels=True) == 4 + guided_steps


PLAIN_DIFFUSERS = """
import sys, torch
sys.modules['denoising_diffusion'] = None
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({path!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(5), output_type="pt", class_labels=[0, 2]).images
torch.save({{"images": images, "evaluations": pipe.network_evaluations(class_labels=True)}}, {out!r})
"""


def test_with_class_labels_is_saved_and_loaded_by_the_package_and_by_plain_diffusers(tmp_path):
    pipe = class_pipeline()
    expected = run(pipe, class_labels=[0, 2])
    pipe.save_pretrained(tmp_path / "model")
    loaded = CosineDDIMPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.sampling_defaults["with_class_labels"] == DEFAULTS["with_class_labels"]
    torch.testing.assert_close(run(loaded, class_labels=[0, 2]), expected, rtol=0, atol=0)

    out = tmp_path / "plain.pt"  # the code the folder carries, without this package
    code = PLAIN_DIFFUSERS.format(path=str(tmp_path / "model"), out=str(out))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    plain = torch.load(out)
    assert plain["evaluations"] == 6
    torch.testing.assert_close(plain["images"], expected, rtol=0, atol=0)


def test_pipelines_without_with_class_labels_sample_class_labels_as_before():
    before = {"num_inference_steps": 4, "autoguidance_scale": 2.0, "guidance_scale": 3.0}
    pipe = class_pipeline(before)
    main, guide = CountCalls(pipe.unet), CountCalls(pipe.guide_unet)
    asked = run(pipe, class_labels=[0, 2])
    assert (main.calls, guide.calls) == (4, 4)  # the top-level defaults, both guidances
    torch.testing.assert_close(asked, run(pipe, class_labels=[0, 2], num_inference_steps=4, guidance_scale=3.0,
                                          autoguidance_scale=2.0), rtol=0, atol=0)
    assert pipe.call_defaults(class_labels_given=True) == before == pipe.call_defaults()


@pytest.mark.parametrize("nested, message", [
    ({"class_prior": [1, 1]}, r"Unknown sampling_defaults with_class_labels \['class_prior'\]"),
    ({"with_class_labels": {}}, r"Unknown sampling_defaults with_class_labels \['with_class_labels'\]"),
    ({"guidance_scale": 0.5}, r"sampling_defaults with_class_labels guidance_scale must be a number >= 1"),
    ({"num_inference_steps": 0}, r"sampling_defaults with_class_labels num_inference_steps must be an integer >= 1"),
    ({"guidance_interval": [2.0, 1.0]}, "guidance_interval"),
])
def test_bad_with_class_labels_are_named(nested, message):
    with pytest.raises(ValueError, match=message):
        check_sampling_defaults({"with_class_labels": nested})


def test_with_class_labels_is_checked_against_the_pipeline():
    with pytest.raises(ValueError, match=r"with_class_labels must be a mapping of some of \['num_inference_steps'"):
        check_sampling_defaults({"with_class_labels": 5.0})
    checked = check_sampling_defaults({"with_class_labels": {"guidance_interval": [0.4, float("inf")]}})
    assert checked["with_class_labels"] == {"guidance_interval": [0.4, None]}  # stored as JSON can hold it
    with pytest.raises(ValueError, match="sets with_class_labels .* but the UNet is unconditional"):
        CosineDDIMPipeline(tiny_unet(), CosineDDIMScheduler(), sampling_defaults={"with_class_labels": {}})
    with pytest.raises(ValueError, match="sampling_defaults with_class_labels sets autoguidance_scale, but there is "
                                         "no guide_unet"):
        CosineDDIMPipeline(tiny_unet(num_class_embeds=4), CosineDDIMScheduler(),
                           sampling_defaults={"with_class_labels": {"autoguidance_scale": 2.0}})
    pipe = CosineDDIMPipeline(tiny_unet(num_class_embeds=4), CosineDDIMScheduler(),
                              sampling_defaults={"with_class_labels": {"autoguidance_scale": 1.0, "guidance_scale": 2}})
    assert pipe.network_evaluations(1, class_labels=True) == 2


def test_the_training_config_checks_with_class_labels():
    nested = '{"with_class_labels": {"guidance_scale": 5.0}}'
    with pytest.raises(ConfigError, match=r"sampling.with_class_labels sets defaults for class labels, which needs a "
                                          r"class-conditional model \(label_column\)"):
        parse_config(TINY + ["--sampling", nested])
    with pytest.raises(ConfigError, match=r"sampling.with_class_labels.autoguidance_scale=2.0 needs a guide"):
        parse_config(TINY + ["--label_column", "label", "--sampling", '{"with_class_labels": {"autoguidance_scale": 2.0}}'])
    with pytest.raises(ConfigError, match=r"sampling: Unknown sampling_defaults with_class_labels \['steps'\]"):
        parse_config(TINY + ["--label_column", "label", "--sampling", '{"with_class_labels": {"steps": 5}}'])
    config = parse_config(TINY + ["--label_column", "label", "--sampling", nested])
    assert config.sampling["with_class_labels"] == {"guidance_scale": 5.0}
    for name in ("emoji32.yaml", "emoji.yaml", "images.yaml"):  # the shipped configs store it, and it is valid
        config = parse_config(["--config", str(ROOT / "configs" / name)])
        assert config.sampling["timestep_spacing"] == "time"  # pipe() steps in t, a requested class in log-SNR
        assert config.sampling["with_class_labels"] == {"guidance_scale": 5.0, "autoguidance_scale": 1.0,
                                                        "timestep_spacing": "log_snr"}


def test_components_drop_what_the_trained_model_cannot_use():
    from denoising_diffusion.training.components import resolve_class_prior, sampling_components

    sampling = {"scheduler": "dpm_solver", "autoguidance_scale": 2.0, "class_prior": "dataset", "guidance_scale": 2.0,
                "with_class_labels": {"guidance_scale": 5.0, "autoguidance_scale": 3.0}}
    # label_column: auto on a folder without classes trains an unconditional model: no class settings stay
    assert resolve_class_prior(sampling, None, None) == {"scheduler": "dpm_solver", "autoguidance_scale": 2.0}
    # a run without a guide stores no autoguidance, at either level
    _, defaults = sampling_components({k: v for k, v in sampling.items() if k != "class_prior"},
                                      CosineDDIMScheduler().config, guided=False)
    assert defaults == {"guidance_scale": 2.0, "with_class_labels": {"guidance_scale": 5.0}}


def test_a_trained_class_conditional_model_stores_it_and_its_card_says_how_to_ask_for_a_class(tmp_path):
    from denoising_diffusion.publishing import render_model_card

    sampling = ('{"scheduler": "dpm_solver", "num_inference_steps": 4, "autoguidance_scale": 2.0, "class_prior": '
                '"dataset", "with_class_labels": {"num_inference_steps": 3, "guidance_scale": 5.0, '
                '"autoguidance_scale": 1.0}}')
    out = train(parse_config(TINY + ["--output_dir", str(tmp_path / "run"), "--label_column", "label",
                                     "--max_train_steps", "4", "--guide", "ema_snapshot", "--sampling", sampling]))
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert pipe.config.sampling_defaults["with_class_labels"] == {"num_inference_steps": 3, "guidance_scale": 5.0,
                                                                  "autoguidance_scale": 1.0}
    assert pipe.network_evaluations() == 8 and pipe.network_evaluations(class_labels=True) == 6
    card = render_model_card(out).text
    assert ("a class: `pipe(batch_size=4, class_labels=[1] * 4)` | DPM-Solver++(2M), 3 steps, classifier-free "
            "guidance 5 | 6 |") in card
    assert "the defaults: `pipe(batch_size=4)` | DPM-Solver++(2M), 4 steps, autoguidance 2" in card
