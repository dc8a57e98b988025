"""Self-conditioning (Chen et al. 2022): the UNet reads its previous clean-image estimate."""

import pytest
import torch

from conftest import tiny_unet
from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler, CosineDPMSolverScheduler
from denoising_diffusion.training import ConfigError, parse_config, train
from test_training import TINY, KillAfterCheckpoint, assert_same_weights, unet_weights


@pytest.mark.parametrize("patch_size", [1, 2])
def test_a_self_conditioned_unet_reads_the_estimate_and_none_means_zeros(patch_size):
    unet = tiny_unet(self_conditioning=True, patch_size=patch_size)
    assert unet.conv_in.in_channels == 2 * patch_size**2  # (sample + estimate) x the pixels of a patch
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    estimate = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        without = unet(x, 0.5).sample
        assert torch.equal(without, unet(x, 0.5, self_condition=torch.zeros_like(x)).sample)
        assert not torch.allclose(without, unet(x, 0.5, self_condition=estimate).sample)
    with pytest.raises(ValueError, match=r"self_condition must have the sample's shape \(2, 1, 8, 8\)"):
        unet(x, 0.5, self_condition=estimate[:1])
    with pytest.raises(ValueError, match="not trained with self_conditioning"):
        tiny_unet()(x, 0.5, self_condition=estimate)


@pytest.mark.parametrize("scheduler", [CosineDDIMScheduler, CosineDPMSolverScheduler])
def test_sampling_feeds_each_step_the_previous_steps_clean_estimate(scheduler):
    pipe = CosineDDIMPipeline(tiny_unet(self_conditioning=True), scheduler())
    pipe.set_progress_bar_config(disable=True)
    seen, outputs = [], []
    pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args, kwargs.get("self_condition"))),
                                        with_kwargs=True)
    pipe.unet.register_forward_hook(lambda m, args, out: outputs.append(out.sample))
    pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert len(seen) == 3 and seen[0][1] is None
    for step in (1, 2):
        (sample, t), _ = seen[step - 1]
        expected, _ = pipe.scheduler.convert_model_output(outputs[step - 1], t, sample)
        torch.testing.assert_close(seen[step][1], expected)


def test_self_conditioned_training_saves_a_model_that_samples_and_resumes_exactly(tmp_path):
    common = ["--max_train_steps", 4, "--checkpointing_steps", 2, "--self_conditioning"]
    config = lambda name, *extra: parse_config(TINY + ["--output_dir", str(tmp_path / name), *map(str, common + list(extra))])  # noqa: E731
    straight = train(config("straight"))
    pipe = CosineDDIMPipeline.from_pretrained(straight)
    assert pipe.unet.config.self_conditioning and pipe.self_conditioned
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=2, num_inference_steps=2, output_type="pt").images.shape == (2, 1, 8, 8)
    with pytest.raises(KeyboardInterrupt):
        train(config("resumed"), callbacks=[KillAfterCheckpoint(2)])
    resumed = train(config("resumed", "--resume_from_checkpoint", "latest"))
    assert_same_weights(unet_weights(straight), unet_weights(resumed))
    with pytest.raises(ConfigError, match="is self-conditioned"):
        train(parse_config(TINY + ["--output_dir", str(tmp_path / "student"), "--teacher", str(straight),
                                   "--distill_steps", "2", "--max_train_steps", "1"]))
