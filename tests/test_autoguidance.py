"""Autoguidance (a guide UNet in the pipeline), guidance intervals, sampling defaults, and the guide the
trainer takes of itself."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_pipeline, tiny_unet
from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler, CosineDPMSolverScheduler
from denoising_diffusion.pipelines.guidance import check_sampling_defaults
from denoising_diffusion.training import ConfigError, parse_config, train
from denoising_diffusion.training.checkpoints import export_pipeline
from test_training import ROOT, TINY, KillAfterCheckpoint, assert_same_weights


def guided_pipeline(num_class_embeds=None, **kwargs):
    """A tiny pipeline whose guide is the same architecture with other (non-zero) output weights."""
    extra = {} if num_class_embeds is None else {"num_class_embeds": num_class_embeds}
    guide = tiny_unet(**extra)
    with torch.no_grad():
        torch.nn.init.normal_(guide.conv_out.weight, std=0.2, generator=torch.Generator().manual_seed(1))
    return tiny_pipeline(unet=tiny_unet(**extra), guide_unet=guide, **kwargs)


class CountCalls:
    """Counts forward passes (calls) of a module."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


def test_autoguidance_is_guide_plus_weight_times_the_difference():
    pipe = guided_pipeline()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(0.6)
    with torch.no_grad():
        main, guide = pipe.unet(x, t).sample, pipe.guide_unet(x, t).sample
        assert not torch.allclose(main, guide)  # otherwise the test proves nothing
        torch.testing.assert_close(pipe.predict(x, t, autoguidance_scale=2.5), guide + 2.5 * (main - guide))
        assert torch.equal(pipe.predict(x, t, autoguidance_scale=1.0), main)


def test_autoguidance_combines_with_classifier_free_guidance():
    pipe = guided_pipeline(num_class_embeds=4)  # 3 classes + "no class"
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels, null = torch.tensor([0, 2]), torch.tensor([3, 3])
    t = torch.tensor(0.4)
    with torch.no_grad():
        cond, uncond = pipe.unet(x, t, class_labels=labels).sample, pipe.unet(x, t, class_labels=null).sample
        guide = pipe.guide_unet(x, t, class_labels=labels).sample
        main = uncond + 3.0 * (cond - uncond)
        torch.testing.assert_close(pipe.predict(x, t, labels, guidance_scale=3.0, autoguidance_scale=2.0),
                                   guide + 2.0 * (main - guide), atol=1e-5, rtol=1e-5)


def test_guidance_interval_guides_only_inside_the_band_and_network_evaluations_count_the_passes():
    pipe = guided_pipeline()
    main_calls, guide_calls = CountCalls(pipe.unet), CountCalls(pipe.guide_unet)
    steps = 8
    pipe.scheduler.set_timesteps(steps)
    levels = [pipe.noise_level(t) for t in pipe.scheduler.timesteps]
    interval = (0.5, 3.0)
    inside = sum(interval[0] < s <= interval[1] for s in levels)
    assert 0 < inside < steps
    run = lambda **kw: pipe(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),  # noqa: E731
                            output_type="pt", **kw).images
    guided = run(autoguidance_scale=2.0, guidance_interval=interval)
    assert (main_calls.calls, guide_calls.calls) == (steps, inside)
    assert pipe.network_evaluations(steps, autoguidance_scale=2.0, guidance_interval=interval) == steps + inside
    assert pipe.network_evaluations(steps, autoguidance_scale=2.0) == 2 * steps
    assert pipe.network_evaluations(steps) == steps
    # an interval that holds no step samples exactly as without guidance
    torch.testing.assert_close(run(autoguidance_scale=2.0, guidance_interval=(100.0, None)), run(), rtol=0, atol=0)
    plain = run()
    assert ((plain > 0) & (plain < 1)).all() and ((guided > 0) & (guided < 1)).all()
    assert ((guided - plain).abs() > 1e-5).float().mean() > 0.9  # guidance moves (nearly) every pixel
    # classifier-free guidance follows the same interval: 2 passes inside it, 1 outside
    cond = guided_pipeline(num_class_embeds=3)
    assert cond.network_evaluations(steps, guidance_scale=2.0, guidance_interval=interval, class_labels=True) == (
        steps + inside)


def test_bad_guidance_arguments_are_named():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="needs a guide_unet"):
        pipe(num_inference_steps=2, autoguidance_scale=2.0)
    guided = guided_pipeline()
    with pytest.raises(ValueError, match=r"guidance_interval must satisfy 0 <= sigma_lo < sigma_hi, got \(2.0, 1.0\)"):
        guided(num_inference_steps=2, autoguidance_scale=2.0, guidance_interval=(2.0, 1.0))
    with pytest.raises(ValueError, match="guidance_interval must be two noise levels"):
        guided(num_inference_steps=2, guidance_interval=0.5)
    with pytest.raises(ValueError, match="autoguidance_scale must be a number"):
        guided(num_inference_steps=2, autoguidance_scale="strong")
    with pytest.raises(ValueError, match="guide_unet cannot guide this unet: they differ in max_signal_rate"):
        guided.guide_unet = tiny_unet(max_signal_rate=0.99)
    with pytest.raises(ValueError, match="sampling_defaults sets autoguidance_scale, but there is no guide_unet"):
        CosineDDIMPipeline(tiny_unet(), CosineDDIMScheduler(), sampling_defaults={"autoguidance_scale": 2.0})
    with pytest.raises(ValueError, match=r"Unknown sampling_defaults \['steps'\]"):
        CosineDDIMPipeline(tiny_unet(), CosineDDIMScheduler(), sampling_defaults={"steps": 4})


def test_sampling_defaults_are_what_a_call_without_arguments_uses():
    defaults = {"num_inference_steps": 5, "autoguidance_scale": 1.8, "guidance_interval": [0.3, None]}
    pipe = guided_pipeline(sampling_defaults=defaults)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain = pipe(batch_size=2, generator=g(), output_type="pt").images
    spelled = pipe(batch_size=2, generator=g(), output_type="pt", num_inference_steps=5, autoguidance_scale=1.8,
                   guidance_interval=(0.3, float("inf"))).images
    torch.testing.assert_close(plain, spelled, rtol=0, atol=0)
    off = pipe(batch_size=2, generator=g(), output_type="pt", autoguidance_scale=1.0).images
    assert not torch.allclose(plain, off)
    assert pipe.network_evaluations() == 5 + sum(pipe.noise_level(t) > 0.3 for t in pipe.scheduler.timesteps)


SAMPLE = """
import sys, torch
{block}
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({path!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), output_type="pt").images
torch.save({{"images": images, "guide": type(pipe.guide_unet).__module__, "info": dict(pipe.config.guide_info)}}, {out!r})
"""


@pytest.mark.parametrize("scheduler", [CosineDDIMScheduler, CosineDPMSolverScheduler])
def test_a_saved_guide_and_defaults_load_with_the_package_and_with_plain_diffusers(tmp_path, scheduler):
    info = {"kind": "ema_snapshot", "step": 3, "of_steps": 12}
    pipe = guided_pipeline(sampling_defaults={"num_inference_steps": 4, "autoguidance_scale": 2.0},
                           guide_info=info)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "guide_unet" / "unet_continuous.py").exists()
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), output_type="pt").images
    loaded = CosineDDIMPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is scheduler and loaded.config.guide_info == info
    assert_same_weights(loaded.guide_unet.state_dict(), pipe.guide_unet.state_dict())
    torch.testing.assert_close(loaded(batch_size=2, generator=torch.Generator().manual_seed(7), output_type="pt").images,
                               expected, rtol=0, atol=0)
    out = tmp_path / "plain.pt"
    code = SAMPLE.format(block="sys.modules['denoising_diffusion'] = None", path=str(tmp_path / "model"), out=str(out))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    plain = torch.load(out)
    assert plain["guide"].startswith("diffusers_modules") and plain["info"] == info
    torch.testing.assert_close(plain["images"], expected, rtol=0, atol=0)


def test_folders_saved_before_guides_existed_load_and_sample_as_before(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "old")
    index_path = tmp_path / "old" / "model_index.json"
    index = json.loads(index_path.read_text())
    for key in ("guide_unet", "guide_info", "sampling_defaults"):
        index.pop(key)
    index_path.write_text(json.dumps(index))
    old = CosineDDIMPipeline.from_pretrained(tmp_path / "old")
    old.set_progress_bar_config(disable=True)
    assert old.guide_unet is None and old.network_evaluations() == 20
    run = lambda p: p(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images  # noqa: E731
    torch.testing.assert_close(run(old), run(pipe), rtol=0, atol=0)


def guide_run(tmp_path, *extra, name="run", callbacks=()):
    args = TINY + ["--output_dir", str(tmp_path / name), "--max_train_steps", "6", "--checkpointing_steps", "2",
                   "--guide", "ema_snapshot", "--guide_fraction", "0.5", *map(str, extra)]
    return train(parse_config(args), callbacks=list(callbacks))


def ema_weights(checkpoint, like):
    shadow = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=True)["shadow_params"]
    return {name: value for (name, _), value in zip(like.named_parameters(), shadow, strict=True)}


def test_the_trainer_keeps_its_ema_weights_at_the_guides_step_as_the_pipelines_guide(tmp_path):
    sampling = '{"scheduler": "dpm_solver", "num_inference_steps": 3, "autoguidance_scale": 2.0}'
    out = guide_run(tmp_path, "--sampling", sampling)
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert pipe.config.guide_info == {"kind": "ema_snapshot", "step": 3, "of_steps": 6}
    assert type(pipe.scheduler) is CosineDPMSolverScheduler
    assert pipe.config.sampling_defaults == {"num_inference_steps": 3, "autoguidance_scale": 2.0}
    # the guide is the EMA at step 3: checkpoint-4's file holds it, and it differs from the EMA at 4 and 6
    guide = load_file(str(out / "guide_unet" / "diffusion_pytorch_model.safetensors"))
    assert_same_weights(guide, load_file(str(out / "checkpoint-4" / "guide_unet.safetensors")))
    assert "guide_unet.safetensors" not in os.listdir(out / "checkpoint-2")
    at_4 = ema_weights(out / "checkpoint-4", pipe.unet)
    assert any(not torch.equal(guide[k], at_4[k]) for k in at_4)
    # exported checkpoints carry the guide and the defaults; one from before the snapshot has neither guide nor scale
    exported = CosineDDIMPipeline.from_pretrained(export_pipeline(out / "checkpoint-4", tmp_path / "export"))
    assert_same_weights(exported.guide_unet.state_dict(), pipe.guide_unet.state_dict())
    early = CosineDDIMPipeline.from_pretrained(export_pipeline(out / "checkpoint-2", tmp_path / "early"))
    assert early.guide_unet is None and early.config.sampling_defaults == {"num_inference_steps": 3}
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["guide"] == {"kind": "ema_snapshot", "step": 3, "of_steps": 6}
    card = (out / "README.md").read_text()
    assert "the same network's EMA weights at step 3 of 6" in card
    assert "### How to sample at each budget" in card and "images = pipe(batch_size=4, generator=" in card
    calls = pipe.network_evaluations()
    assert f"| the defaults: `pipe(batch_size=4)` | DPM-Solver++(2M), 3 steps, autoguidance 2 | {calls} |" in card
    assert calls == 6 and "| `autoguidance_scale=1.0` | DPM-Solver++(2M), 3 steps, no autoguidance | 3 |" in card


def test_taking_the_guide_changes_nothing_in_the_training(tmp_path):
    guided = guide_run(tmp_path, name="guided")
    plain = train(parse_config(TINY + ["--output_dir", str(tmp_path / "plain"), "--max_train_steps", "6",
                                       "--checkpointing_steps", "2"]))
    weights = lambda folder: load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))  # noqa: E731
    assert_same_weights(weights(guided), weights(plain))


@pytest.mark.parametrize("kill_after", [2, 4])  # before the snapshot, and after it
def test_a_resumed_run_ends_with_the_same_guide(tmp_path, kill_after):
    straight = guide_run(tmp_path, name="straight")
    with pytest.raises(KeyboardInterrupt):
        guide_run(tmp_path, name="resumed", callbacks=[KillAfterCheckpoint(kill_after)])
    resumed = guide_run(tmp_path, "--resume_from_checkpoint", "latest", name="resumed")
    weights = lambda folder, part: load_file(str(folder / part / "diffusion_pytorch_model.safetensors"))  # noqa: E731
    assert_same_weights(weights(straight, "guide_unet"), weights(resumed, "guide_unet"))
    assert_same_weights(weights(straight, "unet"), weights(resumed, "unet"))


def test_resuming_past_the_guides_step_without_it_is_refused(tmp_path):
    train(parse_config(TINY + ["--output_dir", str(tmp_path / "run"), "--max_train_steps", "4",
                               "--checkpointing_steps", "4"]))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*"))
    with pytest.raises(ConfigError, match="past the guide's step 3 but holds no guide_unet.safetensors"):
        guide_run(tmp_path, "--resume_from_checkpoint", "latest", name="run")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*")) == before  # nothing written


@pytest.mark.parametrize("args, message", [
    (["--guide", "small"], r"guide='small' is not valid; expected one of \('ema_snapshot',\)"),
    (["--guide", "ema_snapshot", "--guide_fraction", "1.5"], "guide_fraction=1.5 is not valid"),
    (["--sampling", '{"autoguidance_scale": 2.0}'], "sampling.autoguidance_scale=2.0 needs a guide"),
    (["--sampling", '{"scheduler": "euler"}'], "sampling.scheduler='euler' is not valid"),
    (["--sampling", '{"num_inference_steps": 0}'], "num_inference_steps must be an integer >= 1, got 0"),
    (["--sampling", "{steps: 3"], "is not a JSON mapping"),
    (["--time_distribution", "beta"], "time_distribution='beta' is not valid"),
    (["--time_distribution", "log_normal", "--p_std", "0"], "p_std=0.0 is not valid"),
])
def test_bad_guidance_and_time_options_are_named(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(TINY + args)


def test_uniform_times_are_the_plain_draws_and_log_normal_times_follow_edms_truncated_distribution():
    from scipy.stats import truncnorm

    from denoising_diffusion.schedulers.noise_schedule import log_snr
    from denoising_diffusion.training.objectives import TimeDistribution

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(TimeDistribution().sample(64, g(), "cpu"), torch.rand(64, generator=g()))
    times = TimeDistribution("log_normal", -0.5, 1.2, "cosine", 0.02, 0.99).sample(50_000, g(), "cpu")
    assert times.dtype == torch.float32 and 0 <= times.min() and times.max() <= 1
    log_sigma = -log_snr(times.double(), "cosine", 0.02, 0.99)
    low, high = (-log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64), "cosine", 0.02, 0.99)).tolist()
    expected = truncnorm((low + 0.5) / 1.2, (high + 0.5) / 1.2, loc=-0.5, scale=1.2)
    assert abs(log_sigma.mean().item() - expected.mean()) < 0.02
    assert abs(log_sigma.std().item() - expected.std()) < 0.02
    assert log_sigma.min() >= low - 1e-4 and log_sigma.max() <= high + 1e-4


BY_REPO_ID = """
import sys, torch
from denoising_diffusion import CosineDDIMPipeline
pipe = CosineDDIMPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), output_type="pt").images
torch.save({"images": images, "info": dict(pipe.config.guide_info), "guided": pipe.guide_unet is not None}, sys.argv[2])
"""


def test_a_guided_pipeline_pushed_to_the_hub_loads_by_repo_id_with_its_guide(tmp_path):
    from fake_hub import FakeHub
    from test_hub import SECRET, run

    info = {"kind": "ema_snapshot", "step": 3, "of_steps": 12}
    pipe = guided_pipeline(sampling_defaults={"num_inference_steps": 4, "autoguidance_scale": 2.0}, guide_info=info)
    pipe.save_pretrained(tmp_path / "model")
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), output_type="pt").images
    with FakeHub() as hub:
        run(["-m", "denoising_diffusion.hub", "push", str(tmp_path / "model"), "--repo_id", "someone/guided",
             "--token", SECRET], hub, tmp_path)
        files = hub.repos["someone/guided"]["files"]
        assert {"guide_unet/config.json", "guide_unet/diffusion_pytorch_model.safetensors",
                "guide_unet/unet_continuous.py"} <= set(files)
        run(["-c", BY_REPO_ID, "someone/guided", str(tmp_path / "hub.pt")], hub, tmp_path)
    loaded = torch.load(tmp_path / "hub.pt")
    assert loaded["guided"] and loaded["info"] == info
    torch.testing.assert_close(loaded["images"], expected, rtol=0, atol=0)


def test_the_default_digits_config_saves_a_pipeline_that_samples_its_measured_best_with_no_arguments(tmp_path):
    from test_training import ROOT

    out = train(parse_config(["--config", str(ROOT / "configs" / "digits.yaml"), "--output_dir", str(tmp_path / "d"),
                              "--max_train_steps", "4", "--max_train_samples", "64", "--num_grid_images", "2",
                              "--logger", "none"]))
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert type(pipe.scheduler) is CosineDPMSolverScheduler and pipe.guide_unet is not None
    assert pipe.config.guide_info == {"kind": "ema_snapshot", "step": 1, "of_steps": 4}
    assert pipe.network_evaluations() == 10  # 7 steps, 3 of them guided: the budget it was measured at


def test_a_stored_classifier_free_guidance_weight_is_used_with_class_labels_only(tmp_path):
    unet = tiny_unet(num_class_embeds=4)  # 3 classes + "no class"
    with torch.no_grad():  # an untrained UNet outputs zeros, for every class: give it an output
        torch.nn.init.normal_(unet.conv_out.weight, std=0.2, generator=torch.Generator().manual_seed(1))
    pipe = tiny_pipeline(unet=unet, sampling_defaults={"num_inference_steps": 4, "guidance_scale": 3.0})
    calls = CountCalls(pipe.unet)
    run = lambda **kw: pipe(batch_size=2, generator=torch.Generator().manual_seed(5), output_type="pt", **kw).images  # noqa: E731
    stored = run(class_labels=[0, 2])
    assert calls.calls == 4  # one batched pass per step: conditional and unconditional halves together
    torch.testing.assert_close(stored, run(class_labels=[0, 2], guidance_scale=3.0), rtol=0, atol=0)
    assert not torch.allclose(stored, run(class_labels=[0, 2], guidance_scale=1.0))
    unconditional = run()  # without class labels the stored weight does not apply (nothing to guide towards)
    torch.testing.assert_close(unconditional, run(guidance_scale=1.0), rtol=0, atol=0)
    assert pipe.network_evaluations(class_labels=True) == 8 and pipe.network_evaluations() == 4
    assert pipe.network_evaluations(guidance_scale=1.0, class_labels=True) == 4
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs class_labels"):
        run(guidance_scale=2.0)
    pipe.save_pretrained(tmp_path / "cond")
    loaded = CosineDDIMPipeline.from_pretrained(tmp_path / "cond")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.sampling_defaults["guidance_scale"] == 3.0
    again = loaded(batch_size=2, generator=torch.Generator().manual_seed(5), output_type="pt", class_labels=[0, 2]).images
    torch.testing.assert_close(again, stored, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["autoguidance_scale", "guidance_scale"])
@pytest.mark.parametrize("weight", [True, 0.5, float("nan"), "3"])
def test_stored_guidance_weights_are_checked_alike(name, weight):
    with pytest.raises(ValueError, match=rf"sampling_defaults {name} must be a number >= 1 \(1: no guidance\), got"):
        check_sampling_defaults({name: weight})
    assert check_sampling_defaults({name: 2})[name] == 2


def test_a_stored_classifier_free_guidance_weight_needs_a_class_conditional_model():
    with pytest.raises(ValueError, match="sets guidance_scale, but the UNet is unconditional"):
        CosineDDIMPipeline(tiny_unet(), CosineDDIMScheduler(), sampling_defaults={"guidance_scale": 2.0})
    with pytest.raises(ValueError, match=r"guidance_scale must be a number >= 1 \(1: no guidance\), got 0.5"):
        CosineDDIMPipeline(tiny_unet(num_class_embeds=3), CosineDDIMScheduler(), sampling_defaults={"guidance_scale": 0.5})
    with pytest.raises(ConfigError, match=r"sampling.guidance_scale=3.0 is classifier-free guidance .*\(label_column\)"):
        parse_config(["--config", str(ROOT / "configs" / "digits_keras.yaml"), "--sampling", '{"guidance_scale": 3.0}'])
