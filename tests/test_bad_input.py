"""Bad input and mistakes fail before anything is written, naming the bad value and what was expected;
a resume never destroys a finished model or the record of how it was trained."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
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


def test_pipeline_arguments_that_would_be_wrong_or_fail_deep_inside_are_refused(trained):
    from denoising_diffusion import CosineDDIMPipeline

    pipe = CosineDDIMPipeline.from_pretrained(trained)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"eta must be >= 0 .*got -0.5"):
        pipe(eta=-0.5, num_inference_steps=2)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got -1"):
        pipe(batch_size=-1, num_inference_steps=2)
    with pytest.raises(ValueError, match="generator must be a torch.Generator or a list of them.*got 0"):
        pipe(generator=0, num_inference_steps=2)
    with pytest.raises(ValueError, match="guidance_scale=3.0 needs class_labels"):
        pipe(guidance_scale=3.0, num_inference_steps=2)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    as_numpy = pipe(latents=noise.numpy(), num_inference_steps=2, output_type="pt").images
    torch.testing.assert_close(as_numpy, pipe(latents=noise, num_inference_steps=2, output_type="pt").images)
    images = pipe(latents=noise, num_inference_steps=2, output_type="pt").images
    with pytest.raises(ValueError, match=r"invert\(\) needs images in \[0, 1\], got values from 0 to 255"):
        pipe.invert(torch.linspace(0, 255, 128).reshape(2, 1, 8, 8), num_inference_steps=2)
    with pytest.raises(ValueError, match=r"needs images shaped \(B, 1, H, W\) for this 1-channel model, got \(2, 3, 8, 8\)"):
        pipe.invert(images.repeat(1, 3, 1, 1), num_inference_steps=2)


def test_fractional_class_labels_are_refused_by_the_pipeline():
    from conftest import tiny_unet
    from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler

    pipe = CosineDDIMPipeline(tiny_unet(num_class_embeds=4), CosineDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"class_labels must be whole numbers .*got 1.7"):
        pipe(class_labels=1.7, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"Unknown class names \['1'\]; this model's classes are unnamed"):
        pipe(class_labels="1", num_inference_steps=2)
    pipe(class_labels=2.0, num_inference_steps=1)  # a whole number is an index


@pytest.mark.parametrize("labels, bad", [(["0", "b"], "'b'"), ([0, None], "None"), ([0.0, float("nan")], "nan"),
                                         ([0.0, 1.5], "1.5")])
def test_labels_that_are_not_integers_are_named_before_training(tmp_path, labels, bad):
    from datasets import Dataset, Features, Image, Value

    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L") for _ in range(8)]
    values = (labels * 4)[:8]
    kind = Value("string") if isinstance(labels[0], str) else Value("float64") if isinstance(labels[0], float) \
        else Value("int64")
    (tmp_path / "data").mkdir()
    Dataset.from_dict({"img": images, "y": values}, features=Features({"img": Image(), "y": kind})
                      ).to_parquet(str(tmp_path / "data" / "train.parquet"))
    with pytest.raises(ConfigError, match=f"The label at index 1 of label_column='y' is {bad}; class labels must be "
                                          "integers"):
        train(config_for(tmp_path, "--dataset_name", tmp_path / "data", "--image_column", "img", "--label_column", "y",
                         "--max_train_steps", 1))
    assert not (tmp_path / "run").exists()


def _png_folder(folder, modes):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, mode in enumerate(modes):
        shape = (10, 10) if mode == "L" else (10, 10, 4 if mode == "RGBA" else 3)
        PIL.Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(folder / f"{i}.png")
    return folder


def test_channels_are_checked_on_every_image_and_transparency_is_composited(tmp_path):
    mixed = _png_folder(tmp_path / "mixed", ["L", "RGB", "L", "RGB"])  # a gray image first
    with pytest.raises(ConfigError, match=r"channels=1 but the image at index \d is RGB \(3 channels\): training "
                                          "would turn the colour images gray; set channels: 3"):
        train(config_for(tmp_path, "--train_data_dir", mixed, "--channels", 1, "--max_train_steps", 1))
    train(config_for(tmp_path, "--train_data_dir", mixed, "--channels", 3, "--max_train_steps", 1, name="rgb"))

    from denoising_diffusion.training.decoding import image_to_tensor

    clear = PIL.Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent, hidden colour black
    pixels = image_to_tensor(clear, parse_config(["--channels", "3", "--resolution", "8"]), None)
    assert int(pixels.min()) == 255  # composited on white, not the hidden black


def test_an_unreadable_image_is_found_before_training_with_random_crops(tmp_path):
    folder = _png_folder(tmp_path / "images", ["RGB"] * 6)
    (folder / "3.png").write_bytes(PIL.Image.new("RGB", (10, 10)).tobytes()[:20])  # not a PNG
    with pytest.raises(ConfigError, match=r"Cannot read the image at index \d+"):
        train(config_for(tmp_path, "--train_data_dir", folder, "--channels", 3, "--no_center_crop",
                         "--normalization", "minus_one_one", "--max_train_steps", 1))
    assert not (tmp_path / "run").exists()
