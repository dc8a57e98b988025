"""The trainer's promises off the default path: streaming, random crops, dropout, accumulation,
checkpoint limits, overwrites, NaN guards and option combinations (issue: "kills at any moment").
The subprocess kill tests are in test_fault_injection.py."""

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from denoising_diffusion.training import ConfigError, Trainer, parse_config, train
from denoising_diffusion.training.checkpoints import find_checkpoint
from denoising_diffusion.training.data import EpochSampler, RandomCropDataset, prepare_dataset
from test_training import (PoisonedObjective, _parquet_dataset, _write_pngs, assert_same_weights, config_for,
                           straight_and_resumed, unet_weights)


def test_streaming_runs_as_many_steps_as_asked_over_several_passes(tmp_path):
    data = _parquet_dataset(tmp_path / "data")  # 24 images: 3 batches of 8 per pass
    out = train(config_for(tmp_path, "--dataset_name", data, "--image_column", "img", "--streaming",
                           "--max_train_steps", 10, "--checkpointing_steps", 5, "--train_batch_size", 8))
    assert json.loads((out / "training_summary.json").read_text())["global_step"] == 10
    assert json.loads((out / "checkpoint-10" / "training_state.json").read_text())["epoch"] == 3


def test_streaming_resume_is_exact_across_a_pass_boundary(tmp_path):
    data = _parquet_dataset(tmp_path / "data")
    common = ["--dataset_name", data, "--image_column", "img", "--streaming", "--max_train_steps", 7,
              "--checkpointing_steps", 4, "--random_flip", "--no_center_crop"]
    straight, resumed = straight_and_resumed(tmp_path, common, kill_after_step=4)
    assert_same_weights(unet_weights(straight), unet_weights(resumed))


@pytest.mark.parametrize("source", ["digits", "save_to_disk"])
def test_streaming_works_with_in_memory_and_saved_datasets_and_kid_every_epoch(tmp_path, source):
    from denoising_diffusion.training.data import digits_dataset

    name = "digits"
    if source == "save_to_disk":
        name = str(tmp_path / "saved")
        digits_dataset().select(range(40)).save_to_disk(name)
    out = train(config_for(tmp_path, "--dataset_name", name, "--streaming", "--max_train_steps", 6,
                           "--max_train_samples", 16, "--eval_every_epochs", 1, "--eval_num_samples", 8,
                           "--eval_inference_steps", 1, "--eval_features", "digits"))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 6 and [k["epoch"] for k in summary["kid_history"]] == [1, 2, 3]


def test_random_crops_depend_on_seed_epoch_and_image_only(tmp_path):
    _write_pngs(tmp_path / "images", 12, size=(20, 13))
    config = config_for(tmp_path, "--train_data_dir", tmp_path / "images", "--channels", 3, "--no_center_crop")
    dataset = prepare_dataset(config).dataset
    assert isinstance(dataset, RandomCropDataset)

    def epoch_batches(workers, epoch):
        sampler = dataset.sampler(config.seed)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers)
        return [b["pixel_values"] for b in loader]

    zero, two = epoch_batches(0, 0), epoch_batches(2, 0)
    for a, b in zip(zero, two):  # the same crops whichever worker decodes them
        assert torch.equal(a, b)
    assert not torch.equal(torch.cat(zero), torch.cat(epoch_batches(0, 1)))  # a new epoch: new order and crops
    # the same image in two epochs is cropped differently somewhere
    crops = [dataset[(epoch, 3)]["pixel_values"] for epoch in range(6)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    assert torch.equal(dataset[(2, 5)]["pixel_values"], dataset[(2, 5)]["pixel_values"])
    assert list(EpochSampler(5, 0)) != list(iter(EpochSampler(5, 1)))


def test_random_crops_with_workers_resume_exactly(tmp_path):
    _write_pngs(tmp_path / "images", 24, size=(14, 11))
    common = ["--train_data_dir", tmp_path / "images", "--channels", 3, "--no_center_crop", "--random_flip",
              "--dataloader_num_workers", 2, "--max_train_steps", 6, "--checkpointing_steps", 2]
    straight, resumed = straight_and_resumed(tmp_path, common, kill_after_step=2)
    assert_same_weights(unet_weights(straight), unet_weights(resumed))


def test_dropout_resume_is_exact_with_sample_grids_in_between(tmp_path):
    unet = '{"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "dropout": 0.1}'
    common = ["--unet", unet, "--max_train_steps", 6, "--checkpointing_steps", 2, "--save_images_steps", 1,
              "--gradient_accumulation_steps", 2]
    straight, resumed = straight_and_resumed(tmp_path, common, kill_after_step=2)
    assert_same_weights(unet_weights(straight), unet_weights(resumed))


def test_nan_in_the_first_micro_batch_of_an_accumulated_step_is_caught(tmp_path):
    config = config_for(tmp_path, "--max_train_steps", 6, "--checkpointing_steps", 1, "--logging_steps", 100,
                        "--gradient_accumulation_steps", 2)
    poisoned = PoisonedObjective(config, first_bad=5, once=True)  # step 3's first micro-batch (accumulation 2)
    with pytest.raises(FloatingPointError, match=r"at step 3; training stopped. The last good checkpoint is .*checkpoint-2"):
        train(config, objective=poisoned)
    out = tmp_path / "run"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "checkpoint-2" / "model.safetensors")).values())


def test_checkpoint_limit_of_one_survives_a_kill_while_saving_and_zero_is_refused(tmp_path, monkeypatch):
    out = train(config_for(tmp_path, "--max_train_steps", 3, "--checkpointing_steps", 1, "--checkpoints_total_limit", 1))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]

    def broken_save(self, *args, **kwargs):
        Path(args[0]).mkdir(parents=True, exist_ok=True)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(Accelerator, "save_state", broken_save)
    with pytest.raises(KeyboardInterrupt):
        train(config_for(tmp_path, "--max_train_steps", 5, "--checkpointing_steps", 1, "--checkpoints_total_limit", 1,
                         "--resume_from_checkpoint", "latest"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]  # the old one is still there
    with pytest.raises(ConfigError, match="checkpoints_total_limit=0 is not valid"):
        parse_config(["--checkpoints_total_limit", "0"])


def test_overwrite_output_dir_removes_the_earlier_runs_checkpoints(tmp_path):
    out = train(config_for(tmp_path, "--max_train_steps", 4, "--checkpointing_steps", 2))
    train(config_for(tmp_path, "--max_train_steps", 1, "--checkpointing_steps", 1, "--overwrite_output_dir"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert find_checkpoint(out, "latest").name == "checkpoint-1"
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == []


def test_overwrite_keeps_the_earlier_run_when_the_new_one_fails_its_checks(tmp_path):
    out = train(config_for(tmp_path, "--max_train_steps", 2, "--checkpointing_steps", 2))
    with pytest.raises(ConfigError):
        train(config_for(tmp_path, "--max_train_steps", 1, "--overwrite_output_dir", "--image_column", "nope"))
    assert (out / "checkpoint-2").is_dir()


def test_ema_uses_foreach_updates_and_lives_on_the_training_device_after_resume(tmp_path):
    train(config_for(tmp_path, "--max_train_steps", 2, "--checkpointing_steps", 2))
    trainer = Trainer(config_for(tmp_path, "--max_train_steps", 3, "--resume_from_checkpoint", "latest"))
    assert trainer.resume()[0] == 2
    assert trainer.ema.foreach
    device = trainer.accelerator.device
    assert all(p.device.type == device.type for p in trainer.ema.shadow_params)


def test_unknown_stream_position_is_not_guessed(tmp_path):
    # Streaming checkpoints always record their position; one without it cannot be resumed exactly.
    data = _parquet_dataset(tmp_path / "data")
    common = ["--dataset_name", data, "--image_column", "img", "--streaming", "--checkpointing_steps", 2]
    out = train(config_for(tmp_path, *common, "--max_train_steps", 2))
    state = out / "checkpoint-2" / "training_state.json"
    state.write_text(json.dumps({"training_seconds": 1.0}))
    with pytest.raises(ConfigError, match="does not record its position"):
        train(config_for(tmp_path, *common, "--max_train_steps", 4, "--resume_from_checkpoint", "latest"))


def test_random_crop_data_pickles_for_spawned_workers(tmp_path):
    import pickle

    _write_pngs(tmp_path / "images", 8, size=(20, 13))
    config = config_for(tmp_path, "--train_data_dir", tmp_path / "images", "--channels", 3, "--no_center_crop")
    images = prepare_dataset(config)
    copy = pickle.loads(pickle.dumps(images.dataset))  # what a spawned DataLoader worker receives
    assert torch.equal(copy[(1, 3)]["pixel_values"], images.dataset[(1, 3)]["pixel_values"])

    def batches(**kwargs):
        sampler = images.dataset.sampler(config.seed)
        loader = torch.utils.data.DataLoader(images.dataset, batch_size=4, sampler=sampler, **kwargs)
        return [b["pixel_values"] for b in loader]

    spawned = batches(num_workers=1, multiprocessing_context="spawn")
    for a, b in zip(batches(), spawned, strict=True):
        assert torch.equal(a, b)
