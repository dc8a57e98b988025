"""Progressive distillation: the two-step target, and rounds through the normal trainer."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import TINY_ARGS
from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler
from denoising_diffusion.training import ConfigError, parse_config, train
from denoising_diffusion.training.distillation import (DistillationObjective, distillation_losses, student_times,
                                                       teacher_target)
from denoising_diffusion.training.rounds import distill
from test_training import assert_same_weights, straight_and_resumed, unet_weights


class FakeUNet(nn.Module):
    """A fixed nonlinear 'denoiser' whose output depends on the sample, the time and the class."""

    def forward(self, sample, timestep, class_labels=None):
        t = torch.as_tensor(timestep, dtype=sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
        out = torch.tanh(sample) * (0.5 + t) + 0.1 * sample**2
        if class_labels is not None:
            out = out + 0.2 * class_labels.to(sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("spacing", ["log_snr", "time"])
@pytest.mark.parametrize("teacher_prediction", ["epsilon", "v_prediction"])
def test_one_student_step_with_the_target_lands_where_two_teacher_steps_land(spacing, teacher_prediction, labelled):
    n = 4
    teacher_scheduler = CosineDDIMScheduler(timestep_spacing=spacing, prediction_type=teacher_prediction)
    student_scheduler = CosineDDIMScheduler(timestep_spacing=spacing, prediction_type="sample")
    teacher = FakeUNet()
    teacher_scheduler.set_timesteps(2 * n)
    student_scheduler.set_timesteps(n)
    z = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    i = torch.arange(n, 0, -1)  # one sample per student step: i = n (t = 1) ... 1 (ends at the data)
    labels = torch.tensor([0, 3, 1, 2]) if labelled else None
    target = teacher_target(teacher, teacher_scheduler, student_scheduler, z, i, n, labels)
    if labelled:  # the teacher is asked with each sample's class
        assert not torch.allclose(target, teacher_target(teacher, teacher_scheduler, student_scheduler, z, i, n))
    for row, (step_i, t_student) in enumerate(zip(i.tolist(), student_scheduler.timesteps)):
        t_first, t_second = teacher_scheduler.timesteps[2 * (n - step_i)], teacher_scheduler.timesteps[2 * (n - step_i) + 1]
        assert float(t_first) == float(t_student)  # the student's times are every other teacher time
        assert float(student_times(student_scheduler, torch.tensor([step_i]), n)[0]) == float(t_student)
        x = z[row:row + 1]
        label = None if labels is None else labels[row:row + 1]
        for t in (t_first, t_second):
            x = teacher_scheduler.step(teacher(x, t, label).sample, t, x).prev_sample
        one_step = student_scheduler.step(target[row:row + 1], t_student, z[row:row + 1]).prev_sample
        torch.testing.assert_close(one_step, x, rtol=1e-4, atol=1e-4)
    # the last step ends at the data: the target is the teacher's two-step result itself
    assert not torch.allclose(target, z)


def test_perfect_teacher_and_student_give_zero_loss_and_a_wrong_student_does_not():
    x0 = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))

    class Knows(nn.Module):  # predicts the true x0 whatever the input
        def __init__(self, offset=0.0):
            super().__init__()
            self.offset = offset

        def forward(self, sample, timestep, class_labels=None):
            return SimpleNamespace(sample=x0 + self.offset)

    scheduler = CosineDDIMScheduler(prediction_type="sample")
    perfect = distillation_losses(Knows(), scheduler, Knows(), scheduler, x0, 4, torch.Generator().manual_seed(0))
    assert perfect["loss"].item() < 1e-8 and perfect["image_loss"].item() < 1e-6
    wrong = distillation_losses(Knows(0.3), scheduler, Knows(), scheduler, x0, 4, torch.Generator().manual_seed(0))
    assert wrong["loss"].item() > 0.09  # weight max(SNR, 1) >= 1 times the squared error 0.09


DISTILL = ["--distill_steps", "2", "1", "--prediction_type", "v_prediction", "--max_train_steps", "4",
           "--checkpointing_steps", "2", "--save_images_steps", "4", "--ema_decay", "0.9"]


def distill_config(tmp_path, teacher, *extra, name="distill"):
    return parse_config(TINY_ARGS + ["--teacher", str(teacher), "--output_dir", str(tmp_path / name),
                                     *map(str, DISTILL), *map(str, extra)])


def test_rounds_save_normal_pipelines_that_sample_with_their_step_count(tmp_path, trained):
    last = train(distill_config(tmp_path, trained))
    assert last == tmp_path / "distill" / "student-1-steps"
    for steps in (2, 1):
        folder = tmp_path / "distill" / f"student-{steps}-steps"
        pipe = CosineDDIMPipeline.from_pretrained(folder)
        assert pipe.config.distilled_steps == steps
        assert pipe.scheduler.config.prediction_type == "v_prediction"
        assert json.loads((folder / "training_summary.json").read_text())["global_step"] == 4
        card = (folder / "README.md").read_text()
        assert f"{steps} DDIM step" in card and "progressive distillation" in card
        calls = []
        pipe.scheduler.step = (lambda original: lambda *a, **k: calls.append(1) or original(*a, **k))(pipe.scheduler.step)
        pipe.set_progress_bar_config(disable=True)
        pipe(batch_size=1, output_type="pt")
        assert len(calls) == steps  # the default step count is the distilled one
    # round 2's teacher was round 1's student; the students keep the teacher's statistics and schedule
    config = (tmp_path / "distill" / "student-1-steps" / "training_config.yaml").read_text()
    assert "student-2-steps" in config
    teacher = CosineDDIMPipeline.from_pretrained(trained)
    student = CosineDDIMPipeline.from_pretrained(last)
    assert student.config.image_mean == teacher.config.image_mean
    assert student.scheduler.config.timestep_spacing == teacher.scheduler.config.timestep_spacing
    # the student learned: its weights moved away from the teacher's
    moved = [not torch.equal(a, b) for a, b in zip(student.unet.state_dict().values(), teacher.unet.state_dict().values())]
    assert any(moved)


def test_a_class_conditional_teacher_distils_into_a_class_conditional_student(tmp_path):
    unet = json.dumps({"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "num_class_embeds": 11})
    conditional = TINY_ARGS + ["--unet", unet, "--label_column", "label", "--cond_drop_prob", "0.5"]
    teacher = train(parse_config(conditional + ["--output_dir", str(tmp_path / "teacher"), "--max_train_steps", "3"]))
    with pytest.raises(ConfigError, match="is class-conditional; set label_column"):
        train(distill_config(tmp_path, teacher, name="no-labels"))
    seen = []

    class LabelSpy(DistillationObjective):
        def __call__(self, unet, scheduler, x0, generator, class_labels=None):
            seen.append(class_labels.clone())  # the class labels given to both teacher and student
            return super().__call__(unet, scheduler, x0, generator, class_labels)

    last = distill(parse_config(conditional + ["--teacher", str(teacher), "--output_dir", str(tmp_path / "distill"),
                                               *map(str, DISTILL), "--distill_steps", "2", "--train_batch_size", "40"]),
                   objective_class=LabelSpy)
    labels = torch.cat(seen)
    assert labels.numel() == 4 * 40
    assert 0 < (labels == 10).sum() < labels.numel()  # the "no class" label is trained too (guidance)
    assert labels[labels != 10].max() <= 9
    student = CosineDDIMPipeline.from_pretrained(last)
    student.set_progress_bar_config(disable=True)
    assert student.unet.config.num_class_embeds == 11 and student.null_class_label == 10
    assert student.config.distilled_steps == 2

    def sample(**kwargs):
        return student(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images

    three, seven = sample(class_labels=[3, 3]), sample(class_labels=[7, 7])
    assert not torch.allclose(three, seven)  # the student's output depends on the class
    assert not torch.allclose(sample(class_labels=[3, 3], guidance_scale=3.0), three)


def test_a_distillation_killed_mid_round_resumes_bit_identically(tmp_path, trained):
    common = ["--teacher", trained, *DISTILL]
    straight, resumed = straight_and_resumed(tmp_path, common, kill_after_step=2)
    assert straight.name == resumed.name == "student-1-steps"
    for round_name in ("student-2-steps", "student-1-steps"):
        assert_same_weights(unet_weights(straight.parent / round_name), unet_weights(resumed.parent / round_name))


def test_resume_skips_finished_rounds(tmp_path, trained, capsys):
    train(distill_config(tmp_path, trained))
    before = unet_weights(tmp_path / "distill" / "student-1-steps")
    train(distill_config(tmp_path, trained, "--resume_from_checkpoint", "latest"))
    assert "already finished" in capsys.readouterr().out
    assert_same_weights(before, unet_weights(tmp_path / "distill" / "student-1-steps"))


@pytest.mark.parametrize("extra, message", [
    (["--distill_steps", "4", "3"], "each half the one before"),
    (["--distill_steps", "0"], "distill_steps"),
    (["--resolution", "16"], "8x8"),
])
def test_bad_distillation_settings_fail_before_training(tmp_path, trained, extra, message):
    with pytest.raises(ConfigError, match=message):
        train(parse_config(TINY_ARGS + ["--teacher", str(trained), "--output_dir", str(tmp_path / "x"),
                                        *map(str, DISTILL), *extra]))


def test_distill_steps_without_a_teacher_is_an_error():
    with pytest.raises(ConfigError, match="both teacher"):
        parse_config(TINY_ARGS + ["--distill_steps", "2", "1"])
