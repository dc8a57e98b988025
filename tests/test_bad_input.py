"""Bad input and mistakes fail before anything is written, naming the bad value and what was expected;
a resume never destroys a finished model or the record of how it was trained."""

import json
from pathlib import Path

import pytest
import torch

from denoising_diffusion.training import ConfigError, parse_config, train
from test_training import config_for


def fingerprint(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resuming_a_finished_run_without_checkpoints_keeps_the_trained_model(tmp_path):
    out = train(config_for(tmp_path, "--max_train_steps", 2))  # checkpointing_steps 500: no checkpoint
    before = fingerprint(out)
    with pytest.raises(ConfigError, match="holds a finished pipeline and no checkpoint: there is nothing to resume"):
        train(config_for(tmp_path, "--max_train_steps", 4, "--resume_from_checkpoint", "latest"))
    assert fingerprint(out) == before


@pytest.mark.parametrize("bad", ["typo", "widths", "empty"])
def test_a_failed_resume_leaves_the_run_and_its_record_as_they_were(tmp_path, bad):
    out = train(config_for(tmp_path, "--max_train_steps", 2, "--checkpointing_steps", 2))
    extra, message = ["--resume_from_checkpoint", "checkpoint-99"], "resume_from_checkpoint='checkpoint-99' is not a"
    if bad == "widths":
        extra = ["--resume_from_checkpoint", "latest", "--unet",
                 '{"block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4}']
        message = r"checkpoint of another model: block_out_channels=\[8, 16\] there, \[8, 8\] in this config"
    elif bad == "empty":
        (out / "checkpoint-5").mkdir()
        extra, message = ["--resume_from_checkpoint", "latest"], "checkpoint-5 is incomplete: it holds no model weights"
    before = fingerprint(out)
    with pytest.raises(ConfigError, match=message):
        train(config_for(tmp_path, "--max_train_steps", 4, *extra))
    assert fingerprint(out) == before  # training_config.yaml too


def test_an_output_dir_that_is_a_file_is_refused_before_the_data_is_read(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train(config_for(tmp_path))


def test_a_typo_in_the_unet_section_is_named_with_the_nearest_key():
    with pytest.raises(ConfigError, match=r"Unknown key\(s\) in the unet section: 'block_out_chanels' "
                                          r"\(did you mean 'block_out_channels'\?\)"):
        train(parse_config(["--unet", '{"block_out_chanels": [8, 16]}', "--max_train_steps", "1"]))


def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("resolution: [16\n")
    with pytest.raises(ConfigError, match=r"Config file '.*broken.yaml' is not valid YAML"):
        parse_config(["--config", str(bad)])


@pytest.mark.parametrize("key, value, expected", [
    ("learning_rate", "-0.001", "expected a positive number"), ("learning_rate", "0", "expected a positive number"),
    ("adam_beta1", "1.5", r"expected a value in \[0, 1\)"), ("dataloader_num_workers", "-1", "expected an integer >= 0"),
    ("lr_scheduler", "cosin", "expected one of"), ("num_grid_images", "0", "expected an integer >= 1"),
    ("max_train_samples", "0", "expected an integer >= 1"), ("normalization_samples", "0", "expected an integer >= 1"),
])
def test_options_out_of_range_are_refused_by_name(key, value, expected):
    with pytest.raises(ConfigError, match=f"{key}={value}.* is not valid; {expected}|{key}='{value}' is not valid"):
        parse_config([f"--{key}={value}"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU fp16 is real")
def test_fp16_on_a_cpu_is_refused_instead_of_training_in_fp32(tmp_path):
    with pytest.raises(ConfigError, match="mixed_precision='fp16' needs a GPU"):
        train(config_for(tmp_path, "--mixed_precision", "fp16", "--max_train_steps", 1))
    assert not (tmp_path / "run").exists()


def test_a_streamed_label_column_without_class_names_asks_for_the_number_of_classes(tmp_path):
    from test_training import _parquet_dataset

    data = _parquet_dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match="number of classes is not known before training: set class_names"):
        train(config_for(tmp_path, "--dataset_name", data, "--image_column", "img", "--label_column", "digit",
                         "--streaming", "--max_train_steps", 2))


def test_a_checkpoint_records_the_model_it_holds(tmp_path):
    out = train(config_for(tmp_path, "--max_train_steps", 2, "--checkpointing_steps", 2))
    spec = json.loads((out / "checkpoint-2" / "pipeline.json").read_text())
    assert spec["unet"]["block_out_channels"] == [8, 16] and len(spec["image_mean"]) == 1
