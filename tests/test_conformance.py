"""Conformance with diffusers' contracts, in the spirit of diffusers' own common testers
(`SchedulerCommonTest`, `ModelTesterMixin`, `PipelineTesterMixin`): config round trips between
schedulers, `compatibles`, the continuous time domain, `from_pretrained` with every standard
argument, dict / tuple outputs, batch consistency, save / load equivalence.

Untrained `ContinuousUNet2DModel`s output exactly zero; every model here comes from `tiny_unet`,
whose output convolution is randomised, so "equal outputs" compares real outputs.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DiffusionPipeline

from conftest import tiny_pipeline, tiny_unet
from denoising_diffusion import (ContinuousUNet2DModel, CosineDDIMPipeline, CosineDDIMScheduler,
                                 CosineDPMSolverScheduler)
from test_pipeline import _fake_hub_cache
from test_scheduler import _matching_diffusers_ddim

SCHEDULERS = [CosineDDIMScheduler, CosineDPMSolverScheduler]
# Every setting away from its default, one at a time (the schedule keys also together).
SHARED_SETTINGS = [
    {"schedule": "linear"}, {"min_signal_rate": 0.05}, {"max_signal_rate": 0.9},
    {"prediction_type": "v_prediction"}, {"prediction_type": "sample"}, {"clip_sample": True},
    {"clip_sample_range": 2.5}, {"schedule": "linear", "min_signal_rate": 0.1, "max_signal_rate": 0.8},
]


def g(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------- schedulers
@pytest.mark.parametrize("settings", SHARED_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("source", SCHEDULERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("target", SCHEDULERS, ids=lambda c: c.__name__)
def test_from_config_keeps_every_setting_across_schedulers(source, target, settings):
    switched = target.from_config(source(**settings).config)
    for key, value in settings.items():
        assert switched.config[key] == value, key
    assert not set(settings) & set(switched.config.get("_use_default_values", []))


@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda c: c.__name__)
def test_scheduler_save_load_and_config_round_trips(cls, tmp_path):
    extra = {"solver_order": 1} if cls is CosineDPMSolverScheduler else {}
    scheduler = cls(schedule="linear", min_signal_rate=0.07, prediction_type="v_prediction", clip_sample=True, **extra)
    scheduler.save_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(cls.from_pretrained(tmp_path).config) == public(scheduler.config)
    assert public(cls.from_config(cls.load_config(tmp_path)).config) == public(scheduler.config)
    assert public(cls.from_config(scheduler.config).config) == public(scheduler.config)
    # and it steps the same after the round trip
    a, b = scheduler, cls.from_pretrained(tmp_path)
    for s in (a, b):
        s.set_timesteps(4)
    x, out = torch.randn(2, 1, 4, 4, generator=g(1)), torch.randn(2, 1, 4, 4, generator=g(2))
    torch.testing.assert_close(a.step(out, a.timesteps[0], x).prev_sample, b.step(out, b.timesteps[0], x).prev_sample,
                               rtol=0, atol=0)


def test_compatibles_list_both_schedulers_and_each_loads_the_others_config():
    for cls in SCHEDULERS:
        assert set(cls().compatibles) == set(SCHEDULERS), cls
        for other in cls().compatibles:
            assert isinstance(other.from_config(cls(schedule="linear").config), other)


@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda c: c.__name__)
def test_step_returns_the_same_as_dict_or_tuple_and_is_batch_consistent(cls):
    scheduler = cls(prediction_type="v_prediction")
    x = torch.randn(3, 2, 4, 4, generator=g(1))
    outputs = [torch.randn(3, 2, 4, 4, generator=g(2 + i)) for i in range(3)]

    def run(batch_rows, return_dict):
        scheduler.set_timesteps(3)
        sample = x[batch_rows]
        for t, out in zip(scheduler.timesteps, outputs):
            step = scheduler.step(out[batch_rows], t, sample, return_dict=return_dict)
            sample = step.prev_sample if return_dict else step[0]
        return sample

    whole = run(slice(None), True)
    torch.testing.assert_close(run(slice(None), False), whole, rtol=0, atol=0)
    for i in range(3):  # each image alone gives what it gave in the batch
        torch.testing.assert_close(run(slice(i, i + 1), True), whole[i:i + 1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("use_clipped", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_clip_sample_matches_diffusers_ddim(prediction_type, use_clipped):
    ours = CosineDDIMScheduler(prediction_type=prediction_type, clip_sample=True, clip_sample_range=0.8,
                               timestep_spacing="time")  # uniform in t: diffusers' "trailing" grid
    theirs = _matching_diffusers_ddim(ours, prediction_type)
    theirs = DDIMScheduler.from_config(theirs.config, clip_sample=True, clip_sample_range=0.8)
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    sample = 2.0 * torch.randn(2, 1, 4, 4, generator=g(0))
    clipped_somewhere = False
    for t_ours, t_theirs in zip(ours.timesteps, theirs.timesteps):
        out = 2.0 * torch.randn(2, 1, 4, 4, generator=g(int(t_theirs)))
        a = ours.step(out, t_ours, sample, use_clipped_model_output=use_clipped)
        b = theirs.step(out, t_theirs, sample, use_clipped_model_output=use_clipped)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, atol=1e-5, rtol=1e-5)
        assert a.pred_original_sample.abs().max() <= 0.8 + 1e-6
        unclipped, _ = ours.convert_model_output(out, t_ours, sample)
        clipped_somewhere |= bool(unclipped.abs().max() > 0.8)
        sample = a.prev_sample
    assert clipped_somewhere  # the test exercised the clipping


def test_clip_sample_is_off_by_default_as_in_the_seeds():
    scheduler = CosineDDIMScheduler()
    scheduler.set_timesteps(2)
    out = torch.full((1, 1, 2, 2), -50.0)
    assert scheduler.step(out, scheduler.timesteps[0], torch.zeros(1, 1, 2, 2)).pred_original_sample.abs().max() > 1


# ---------------------------------------------------------------------------------------- time domain
@pytest.mark.parametrize("bad, error", [(500, TypeError), (torch.tensor([999, 3]), TypeError), (True, TypeError),
                                        (1.5, ValueError), (torch.tensor([0.5, -0.1]), ValueError),
                                        (float("nan"), ValueError)])
def test_integer_or_out_of_range_times_are_rejected_everywhere(bad, error):
    unet, scheduler = tiny_unet(), CosineDDIMScheduler()
    x = torch.randn(2, 1, 8, 8)
    message = r"continuous diffusion time t in \[0, 1\]"
    with pytest.raises(error, match=message):
        unet(x, bad)
    with pytest.raises(error, match=message):
        scheduler.add_noise(x, torch.randn_like(x), bad)
    with pytest.raises(error, match=message):
        scheduler.get_velocity(x, torch.randn_like(x), bad)
    for cls in SCHEDULERS:
        s = cls()
        s.set_timesteps(3)
        with pytest.raises(error, match=message):
            s.step(x, bad, x)


def test_a_diffusers_ddim_pipeline_around_our_unet_fails_loudly_instead_of_sampling_garbage():
    pipe = DDIMPipeline(tiny_unet(), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(TypeError, match="integer timesteps"):
        pipe(batch_size=1, num_inference_steps=2)


# ---------------------------------------------------------------------------------------- models
def test_model_outputs_as_dict_or_tuple_and_batch_consistent():
    unet = tiny_unet().eval()
    x, t = torch.randn(3, 1, 8, 8, generator=g(1)), torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        whole = unet(x, t).sample
        assert whole.abs().sum() > 0
        torch.testing.assert_close(unet(x, t, return_dict=False)[0], whole, rtol=0, atol=0)
        for i in range(3):
            torch.testing.assert_close(unet(x[i:i + 1], t[i:i + 1]).sample, whole[i:i + 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("save_kwargs, load_kwargs", [
    ({}, {}), ({"variant": "fp16"}, {"variant": "fp16"}), ({"max_shard_size": "20KB"}, {}),
    ({}, {"use_safetensors": True}), ({}, {"low_cpu_mem_usage": False}),
], ids=["plain", "variant", "sharded", "use_safetensors", "low_cpu_mem_usage=False"])
def test_model_save_load_equivalence(tmp_path, save_kwargs, load_kwargs):
    unet = tiny_unet(num_class_embeds=3).eval()
    unet.save_pretrained(tmp_path, **save_kwargs)
    loaded = ContinuousUNet2DModel.from_pretrained(tmp_path, **load_kwargs).eval()
    x, t, labels = torch.randn(2, 1, 8, 8, generator=g(1)), torch.tensor([0.2, 0.7]), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, labels).sample, unet(x, t, labels).sample, rtol=0, atol=0)
    if "max_shard_size" in save_kwargs:
        assert len(list(tmp_path.glob("*.safetensors"))) > 1


# ---------------------------------------------------------------------------------------- pipelines
def _images(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, generator=g(7), num_inference_steps=4, output_type="pt", **kwargs).images


@pytest.fixture
def saved(tmp_path):
    pipe = tiny_pipeline(image_mean=[0.4], image_std=[0.3])
    pipe.save_pretrained(tmp_path / "model")
    return pipe, tmp_path / "model"


@pytest.mark.parametrize("kwargs, unet_dtype", [
    ({"dtype": torch.float16}, torch.float16),
    ({"dtype": {"unet": torch.bfloat16, "default": torch.float32}}, torch.bfloat16),
    ({"dtype": {"default": torch.float16}}, torch.float16),
    ({"torch_dtype": torch.bfloat16}, torch.bfloat16),
    ({"device_map": "cpu"}, torch.float32),
    ({"low_cpu_mem_usage": False}, torch.float32),
    ({"low_cpu_mem_usage": True}, torch.float32),
    ({"use_safetensors": True}, torch.float32),
    ({"trust_remote_code": False}, torch.float32),
    ({"trust_remote_code": True}, torch.float32),
], ids=lambda v: str(v))
def test_from_pretrained_takes_diffusers_standard_arguments(saved, kwargs, unet_dtype):
    pipe, folder = saved
    loaded = CosineDDIMPipeline.from_pretrained(folder, **kwargs)
    # The installed classes, never the code stored in the folder.
    assert type(loaded.unet) is ContinuousUNet2DModel and type(loaded.scheduler) is CosineDDIMScheduler
    assert loaded.unet.dtype == unet_dtype
    if unet_dtype == torch.float32:
        torch.testing.assert_close(_images(loaded), _images(pipe), rtol=0, atol=0)
    else:  # half precision: close on average (a few pixels near the clipping bounds may move more)
        assert (_images(loaded) - _images(pipe)).abs().mean() < 0.02


def test_from_pretrained_variant_and_sharded_weights(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "v", variant="fp16")
    pipe.save_pretrained(tmp_path / "s", max_shard_size="20KB")
    assert len(list((tmp_path / "s" / "unet").glob("*.safetensors"))) > 1
    torch.testing.assert_close(_images(CosineDDIMPipeline.from_pretrained(tmp_path / "v", variant="fp16")), _images(pipe))
    torch.testing.assert_close(_images(CosineDDIMPipeline.from_pretrained(tmp_path / "s")), _images(pipe))
    with pytest.raises(ValueError, match="variant=bf16"):  # diffusers' own error
        CosineDDIMPipeline.from_pretrained(tmp_path / "v", variant="bf16")


def test_from_pretrained_component_overrides_and_pipeline_arguments(saved):
    pipe, folder = saved
    dpm = CosineDPMSolverScheduler.from_config(pipe.scheduler.config)
    loaded = CosineDDIMPipeline.from_pretrained(folder, scheduler=dpm, image_mean=[0.6])
    assert loaded.scheduler is dpm and loaded.config.image_mean == [0.6]
    unet = tiny_unet()
    assert CosineDDIMPipeline.from_pretrained(folder, unet=unet).unet is unet
    with pytest.raises(ValueError, match="does not match the UNet's noise schedule"):
        CosineDDIMPipeline.from_pretrained(folder, scheduler=CosineDDIMScheduler(schedule="linear"))


def test_from_pretrained_hub_arguments_offline(saved, tmp_path):
    pipe, folder = saved
    cache = tmp_path / "cache"
    _fake_hub_cache(cache, "someone/tiny", folder)
    loaded = CosineDDIMPipeline.from_pretrained("someone/tiny", cache_dir=cache, local_files_only=True,
                                                revision="main", token=False, force_download=False, proxies=None)
    assert type(loaded.unet) is ContinuousUNet2DModel
    torch.testing.assert_close(_images(loaded), _images(pipe), rtol=0, atol=0)
    with pytest.raises(Exception, match="(?i)cannot find|not.*cached|local"):
        CosineDDIMPipeline.from_pretrained("someone/absent", cache_dir=cache, local_files_only=True)


def test_pipeline_outputs_as_dict_or_tuple_batch_consistency_and_generator_lists():
    pipe = tiny_pipeline()
    whole = _images(pipe)
    (as_tuple,) = pipe(batch_size=2, generator=g(7), num_inference_steps=4, output_type="pt", return_dict=False)
    torch.testing.assert_close(as_tuple, whole, rtol=0, atol=0)
    gens = [g(1), g(2), g(3)]
    batch = pipe(batch_size=3, generator=gens, num_inference_steps=4, output_type="pt").images
    for i, seed in enumerate((1, 2, 3)):
        one = pipe(batch_size=1, generator=[g(seed)], num_inference_steps=4, output_type="pt").images
        torch.testing.assert_close(one, batch[i:i + 1], rtol=1e-4, atol=1e-4)
    eta = pipe(batch_size=2, generator=g(7), num_inference_steps=4, output_type="pt", eta=1.0).images
    assert not torch.allclose(eta, whole)


def test_use_clipped_model_output_is_accepted_like_ddim_pipeline():
    pipe = tiny_pipeline()
    plain = _images(pipe, use_clipped_model_output=True)
    torch.testing.assert_close(plain, _images(pipe), rtol=0, atol=0)  # no clipping configured: no effect
    pipe.scheduler = CosineDDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True, clip_sample_range=0.05)
    assert not torch.allclose(_images(pipe, use_clipped_model_output=True), _images(pipe, use_clipped_model_output=False))


def test_mismatched_schedules_are_refused_at_construction_and_on_replacement():
    with pytest.raises(ValueError, match=r"min_signal_rate=0.1.*does not match the UNet's noise schedule.*min_signal_rate=0.02"):
        CosineDDIMPipeline(tiny_unet(), CosineDDIMScheduler(min_signal_rate=0.1))
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="schedule='linear'"):
        pipe.scheduler = CosineDPMSolverScheduler(schedule="linear")
    with pytest.raises(ValueError, match="not a continuous-time scheduler"):
        pipe.scheduler = DDIMScheduler()
    with pytest.raises(ValueError, match="does not match"):
        pipe.unet = tiny_unet(schedule="linear")
    assert type(pipe.scheduler) is CosineDDIMScheduler  # a refused replacement changes nothing
    pipe.scheduler = CosineDPMSolverScheduler.from_config(pipe.scheduler.config)  # a matching one is fine
    matching = CosineDDIMPipeline(tiny_unet(schedule="linear"), CosineDDIMScheduler(schedule="linear"))
    assert matching.unet.config.schedule == "linear"


def test_invert_works_with_either_scheduler():
    pipe = tiny_pipeline()
    images = _images(pipe)
    for cls in SCHEDULERS:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
        latents = pipe.invert(images, num_inference_steps=4)
        assert latents.shape == images.shape and torch.isfinite(latents).all()


SAMPLE = """
import sys, torch
sys.modules['denoising_diffusion'] = None  # plain diffusers: the package cannot be imported
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({path!r}, trust_remote_code=True, **{kwargs})
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=4, output_type="pt").images
torch.save({{"images": images, "unet": type(pipe.unet).__module__}}, {out!r})
"""


def test_plain_diffusers_loads_variant_and_sharded_folders_with_their_code(tmp_path):
    pipe = tiny_pipeline(image_mean=[0.4], image_std=[0.3])
    pipe.save_pretrained(tmp_path / "model", variant="fp16", max_shard_size="20KB")
    assert len(list((tmp_path / "model" / "unet").glob("*.fp16*.safetensors"))) > 1
    out = tmp_path / "out.pt"
    code = SAMPLE.format(path=str(tmp_path / "model"), kwargs={"variant": "fp16"}, out=str(out))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(out)
    assert loaded["unet"].startswith("diffusers_modules")
    torch.testing.assert_close(loaded["images"], _images(pipe), rtol=0, atol=0)


def test_diffusion_pipeline_refuses_stored_code_without_trust_remote_code(saved):
    _, folder = saved
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(folder)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_noise_level_embedding_stays_float32_in_half_precision_models(dtype):
    # Frequencies up to 2 pi * 1000 lose their meaning when rounded to 16 bits.
    unet = tiny_unet()
    t = torch.linspace(0, 1, 9)
    reference = unet.time_proj(t)
    unet.to(dtype)
    torch.testing.assert_close(unet.time_proj(t), reference, rtol=0, atol=0)


def test_configs_saved_with_num_train_timesteps_still_load(tmp_path):
    # Earlier versions stored num_train_timesteps (unused); such folders load and sample the same
    # (diffusers keeps unknown keys in `config` without passing them to the scheduler).
    (tmp_path / "scheduler_config.json").write_text(
        '{"_class_name": "CosineDDIMScheduler", "schedule": "linear", "num_train_timesteps": 1000}')
    for cls in SCHEDULERS:
        scheduler = cls.from_pretrained(tmp_path)
        assert scheduler.config.schedule == "linear"
        reference = cls(schedule="linear")
        for s in (scheduler, reference):
            s.set_timesteps(3)
        x = torch.randn(1, 1, 4, 4, generator=g(0))
        torch.testing.assert_close(scheduler.step(x, scheduler.timesteps[0], x).prev_sample,
                                   reference.step(x, reference.timesteps[0], x).prev_sample, rtol=0, atol=0)
