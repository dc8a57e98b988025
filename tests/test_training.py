import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from conftest import TINY_ARGS
from denoising_diffusion import CosineDDIMPipeline
from denoising_diffusion.training import Callback, ConfigError, parse_config, train
from denoising_diffusion.training.checkpoints import find_checkpoint
from denoising_diffusion.training.components import build_unet
from denoising_diffusion.training.objectives import DiffusionObjective

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_ARGS


def config_for(tmp_path, *extra, name="run"):
    return parse_config(TINY + ["--output_dir", str(tmp_path / name), *map(str, extra)])


def unet_weights(folder):
    return load_file(str(Path(folder) / "unet" / "diffusion_pytorch_model.safetensors"))


def test_tiny_run_saves_a_loadable_pipeline_with_dataset_statistics(tmp_path):
    out = train(config_for(tmp_path, "--max_train_steps", 3, "--checkpointing_steps", 2, "--save_images_steps", 2))
    for f in ["model_index.json", "training_config.yaml", "samples.png", "samples/step-000002.png",
              "checkpoint-2/model.safetensors", "checkpoint-2/noise_rng_0.pt"]:
        assert (out / f).exists(), f
    pipe = CosineDDIMPipeline.from_pretrained(out)
    # Digits are mostly dark: the stored statistics are the data's, not the [-1, 1] default.
    assert pipe.config.image_mean[0] == pytest.approx(0.31, abs=0.05)
    assert pipe.config.image_std[0] == pytest.approx(0.38, abs=0.05)
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    # The weights moved away from the zero-initialised output layer.
    assert unet_weights(out)["conv_out.weight"].abs().sum() > 0


def test_cli_overrides_yaml_and_unknown_keys_suggest_the_nearest(tmp_path):
    config = parse_config(["--config", str(ROOT / "configs/flowers.yaml"), "--resolution", "32", "--no_use_ema"])
    assert config.resolution == 32 and config.use_ema is False and config.channels == 3
    assert config.dataset_name == "nelorth/oxford-flowers"
    with pytest.raises(ConfigError, match="Unknown config key 'learning_rte' in the command line. Did you mean 'learning_rate'"):
        parse_config(["--learning_rte", "1e-3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_batch_sise: 4\n")
    with pytest.raises(ConfigError, match="Unknown config key 'train_batch_sise' in .*bad.yaml. Did you mean 'train_batch_size'"):
        parse_config(["--config", str(bad)])
    with pytest.raises(ConfigError, match="loss='l2' is not valid; expected one of"):
        parse_config(["--loss", "l2"])
    widths_only = parse_config(["--unet", '{"block_out_channels": [16, 32]}'])
    assert widths_only.unet["down_block_types"] == ["DownBlock2D", "DownBlock2D"]


def test_every_shipped_config_parses_and_builds_its_model():
    for name in ["digits", "flowers", "pets", "mnist", "emoji", "emoji32"]:
        config = parse_config(["--config", str(ROOT / f"configs/{name}.yaml")])
        unet = build_unet(config)
        assert unet.config.sample_size == config.resolution


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image_column", "picture"], r"image_column='picture' is not a column of the dataset; its columns are \['image', 'label'\]"),
        (["--resolution", "9"], "resolution=9 is not divisible by 2, the UNet's downsampling factor"),
        (["--channels", "3"], "channels=3 but the image at index 0 is L \\(1 channel\\); set channels: 1"),
    ],
)
def test_bad_inputs_fail_before_training_with_clear_errors(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        train(config_for(tmp_path, *extra))
    assert not (tmp_path / "run" / "training_config.yaml").exists()  # nothing started


def test_empty_dataset_fails_before_training(tmp_path):
    from datasets import Dataset, Features, Image, Value

    (tmp_path / "empty").mkdir()
    Dataset.from_dict({"image": [], "label": []}, features=Features({"image": Image(), "label": Value("int64")})
                      ).to_parquet(str(tmp_path / "empty" / "train.parquet"))
    with pytest.raises(ConfigError, match=r"The dataset '.*empty' \(split 'train'\) is empty"):
        train(config_for(tmp_path, "--dataset_name", tmp_path / "empty"))


def _write_pngs(folder, count, mode="RGB", size=(12, 10)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        PIL.Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(folder / f"{i}.png")


def test_unreadable_image_is_named(tmp_path):
    _write_pngs(tmp_path / "images", 4)
    (tmp_path / "images" / "2.png").write_bytes(b"not a png at all")
    config = config_for(tmp_path, "--train_data_dir", tmp_path / "images", "--channels", 3, "--max_train_steps", 1)
    with pytest.raises(ConfigError, match=r"Cannot read the image at index \d+ \(.*2\.png\)"):
        train(config)


def test_imagefolder_of_rgb_pngs_with_random_crops_and_flips(tmp_path):
    _write_pngs(tmp_path / "images", 10)
    config = config_for(tmp_path, "--train_data_dir", tmp_path / "images", "--channels", 3, "--max_train_steps", 2,
                        "--no_center_crop", "--random_flip", "--normalization", "minus_one_one")
    out = train(config)
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert pipe.unet.config.in_channels == 3 and pipe.config.image_mean == [0.5, 0.5, 0.5]


def test_center_cropped_images_are_decoded_once_into_uint8_batches(tmp_path):
    from denoising_diffusion.training.data import prepare_dataset
    from denoising_diffusion.training.decoding import image_to_tensor, open_image

    _write_pngs(tmp_path / "images", 10)
    config = config_for(tmp_path, "--train_data_dir", tmp_path / "images", "--channels", 3)
    images = prepare_dataset(config)
    assert type(images.dataset.features["pixel_values"]).__name__ == "Array3D"  # one fixed-shape column
    batch = next(iter(images.dataloader(4, config.seed)))
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (4, 3, 8, 8)
    pixels = images.pixels(10)
    assert pixels.dtype == torch.uint8 and pixels.shape == (10, 3, 8, 8)
    from datasets import load_dataset

    raw = load_dataset("imagefolder", data_dir=str(tmp_path / "images"), split="train")
    for index in (0, 7):  # the same pixels as decoding the image directly
        expected = image_to_tensor(open_image(raw[index]["image"], "here"), config, None)
        assert torch.equal(pixels[index], expected)
    assert all(example["pixel_values"].dtype == torch.uint8 for example in images.examples(3))


@pytest.mark.parametrize("center_crop", [True, False])
def test_streamed_images_arrive_as_uint8_batches_with_their_labels(tmp_path, center_crop):
    from denoising_diffusion.training.data import prepare_dataset

    data = _parquet_dataset(tmp_path / "data")
    crop = [] if center_crop else ["--no_center_crop", "--resolution", 6]
    config = config_for(tmp_path, "--dataset_name", data, "--image_column", "img", "--label_column", "digit",
                        "--streaming", "--max_train_steps", 2, "--channels", 1, *crop,
                        "--unet", '{"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, '
                                  '"num_class_embeds": 25}')
    images = prepare_dataset(config)
    batch = next(iter(images.dataloader(5, config.seed)))
    size = config.resolution
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (5, 1, size, size)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (5,)
    assert 0 <= int(batch["labels"].min()) and int(batch["labels"].max()) < 24
    if center_crop:  # 8x8 images at resolution 8: the pixels themselves, whichever rows the shuffle picked
        from datasets import load_dataset

        raw = load_dataset(str(data), split="train")
        by_label = {row["digit"]: np.asarray(row["img"]) for row in raw}
        for pixels, label in zip(batch["pixel_values"], batch["labels"]):
            assert np.array_equal(pixels[0].numpy(), by_label[int(label)])


def _parquet_dataset(folder, rows=24):
    from datasets import Dataset, Features, Image, Value

    rng = np.random.default_rng(1)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L") for _ in range(rows)]
    folder.mkdir()
    Dataset.from_dict({"img": images, "digit": list(range(rows))},
                      features=Features({"img": Image(), "digit": Value("int64")})).to_parquet(str(folder / "train.parquet"))
    return folder


@pytest.mark.parametrize("streaming", [False, True])
def test_parquet_dataset_by_path_with_other_column_names(tmp_path, streaming):
    data = _parquet_dataset(tmp_path / "data")
    extra = ["--streaming"] if streaming else []
    # the 24 digits are classes 0..23: a stream needs their number given (+1 for "no class")
    unet = '{"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "num_class_embeds": 25}'
    out = train(config_for(tmp_path, "--dataset_name", data, "--image_column", "img", "--label_column", "digit",
                           "--max_train_steps", 2, "--unet", unet, *extra))
    assert (out / "model_index.json").exists()


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class KillAfterCheckpoint(Callback):
    """Stops the run like a kill right after checkpoint `step` is written."""

    def __init__(self, step):
        self.step = step

    def on_checkpoint(self, trainer, step, path):
        if step == self.step:
            raise KeyboardInterrupt("simulated kill")


class PoisonedObjective(DiffusionObjective):
    """The diffusion objective whose loss turns NaN from its `first_bad`-th call (counting from 1) on,
    or only at that call with `once`."""

    def __init__(self, config, first_bad, once=False):
        super().__init__(config.loss, config.loss_on, config.snr_gamma)
        self.first_bad, self.once, self.calls = first_bad, once, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        losses = super().__call__(*args, **kwargs)
        if self.calls == self.first_bad or (self.calls > self.first_bad and not self.once):
            losses["loss"] = losses["loss"] * float("nan")
        return losses


def straight_and_resumed(tmp_path, common, kill_after_step):
    """Train `common` straight, and again killed right after checkpoint `kill_after_step` then resumed."""
    straight = train(config_for(tmp_path, *common, name="straight"))
    with pytest.raises(KeyboardInterrupt):
        train(config_for(tmp_path, *common, name="resumed"), callbacks=[KillAfterCheckpoint(kill_after_step)])
    resumed = train(config_for(tmp_path, *common, "--resume_from_checkpoint", "latest", name="resumed"))
    return straight, resumed


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])  # bf16: what 'auto' picks on CPUs with AVX512-BF16/AMX
def test_resume_matches_an_uninterrupted_run(tmp_path, mixed_precision):
    # 40 images, batch 8, accumulation 2: 3 optimiser steps per epoch; stop mid-epoch at step 2.
    common = ["--max_train_steps", 6, "--gradient_accumulation_steps", 2, "--checkpointing_steps", 2,
              "--lr_scheduler", "cosine", "--lr_warmup_steps", 1, "--random_flip", "--mixed_precision", mixed_precision]
    straight, resumed = straight_and_resumed(tmp_path, common, kill_after_step=2)
    assert_same_weights(unet_weights(straight), unet_weights(resumed))
    # the raw (non-EMA) weights match too
    assert_same_weights(*(load_file(str(p / "checkpoint-6" / "model.safetensors")) for p in (straight, resumed)))


def test_checkpoint_limit_and_a_kill_while_saving_keeps_latest_intact(tmp_path, monkeypatch):
    out = train(config_for(tmp_path, "--max_train_steps", 4, "--checkpointing_steps", 1, "--checkpoints_total_limit", 2))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]

    def broken_save(self, *args, **kwargs):
        Path(args[0]).mkdir(parents=True, exist_ok=True)
        (Path(args[0]) / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(Accelerator, "save_state", broken_save)
    with pytest.raises(KeyboardInterrupt):
        train(config_for(tmp_path, "--max_train_steps", 8, "--checkpointing_steps", 5,
                         "--resume_from_checkpoint", "latest", "--checkpoints_total_limit", 5))
    assert find_checkpoint(out, "latest").name == "checkpoint-4"
    assert (out / ".checkpoint-5.partial").exists()  # the broken one never took a checkpoint-* name


def test_existing_output_dir_is_not_overwritten_by_accident(tmp_path):
    train(config_for(tmp_path, "--max_train_steps", 1))
    with pytest.raises(ConfigError, match="already holds a trained pipeline.*--resume_from_checkpoint latest"):
        train(config_for(tmp_path, "--max_train_steps", 1))
    train(config_for(tmp_path, "--max_train_steps", 1, "--overwrite_output_dir"))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = config_for(tmp_path, "--max_train_steps", 10, "--checkpointing_steps", 2, "--logging_steps", 3)
    with pytest.raises(FloatingPointError, match=r"at step 4; training stopped. The last good checkpoint is .*checkpoint-2"):
        train(config, objective=PoisonedObjective(config, first_bad=4))
    out = tmp_path / "run"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / "model_index.json").exists()


@pytest.mark.parametrize("loss_on, prediction_type", [("image", "epsilon"), ("velocity", "v_prediction"),
                                                      ("noise", "sample")])
def test_objectives_train_and_the_saved_scheduler_knows_the_parametrisation(tmp_path, loss_on, prediction_type):
    out = train(config_for(tmp_path, "--max_train_steps", 2, "--loss", "mse", "--loss_on", loss_on,
                           "--prediction_type", prediction_type, "--schedule", "linear"))
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == prediction_type and scheduler["schedule"] == "linear"


def test_bf16_mixed_precision_on_cpu(tmp_path):
    out = train(config_for(tmp_path, "--max_train_steps", 3, "--mixed_precision", "bf16", name="bf16"))
    AcceleratorState._reset_state(reset_partial_state=True)  # one precision per process, as the sweep does
    fp32 = train(config_for(tmp_path, "--max_train_steps", 3, "--mixed_precision", "no", name="fp32"))
    bf16_weights, fp32_weights = unet_weights(out), unet_weights(fp32)
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in bf16_weights.values())  # fp32 master weights
    # the same seed and batches: the products ran in bf16 (the weights differ), and stayed close to fp32
    assert any(not torch.equal(bf16_weights[k], fp32_weights[k]) for k in bf16_weights)
    assert max((bf16_weights[k] - fp32_weights[k]).abs().max().item() for k in bf16_weights) < 2e-2


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "no")])
def test_auto_mixed_precision_on_a_cpu_is_bf16_only_where_the_cpu_has_it(monkeypatch, native_bf16, expected):
    from denoising_diffusion.training import components
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(components, "cpu_has_native_bf16", lambda: native_bf16)
    assert components.resolve_mixed_precision("auto") == expected
    assert components.resolve_mixed_precision("no") == "no" and components.resolve_mixed_precision("bf16") == "bf16"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_bf16_asked_for_on_a_cpu_without_it_warns(monkeypatch, caplog, native_bf16):
    from denoising_diffusion.training import components
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(components, "cpu_has_native_bf16", lambda: native_bf16)
    with caplog.at_level(logging.WARNING, logger=components.__name__):
        assert components.resolve_mixed_precision("bf16") == "bf16"  # still what was asked for
        assert components.resolve_mixed_precision("auto") == ("bf16" if native_bf16 else "no")  # no warning
        assert components.resolve_mixed_precision("no") == "no"
    warned = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warned) == (0 if native_bf16 else 1)
    if warned:
        assert "mixed_precision='bf16'" in warned[0] and "'auto' or 'no'" in warned[0]


def test_two_process_cpu_run(tmp_path):
    # torchrun is what `accelerate launch --multi_gpu` runs; ACCELERATE_USE_CPU makes Accelerate use gloo on CPU.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           str(ROOT / "train_ddim.py"), *TINY, "--output_dir", str(tmp_path / "ddp"), "--max_train_steps", "2",
           "--checkpointing_steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ckpt = tmp_path / "ddp" / "checkpoint-2"
    for rank in (0, 1):  # each process's RNG and noise-generator state is checkpointed
        assert (ckpt / f"noise_rng_{rank}.pt").exists() and (ckpt / f"random_states_{rank}.pkl").exists()
    assert "x 2 processes" in json.loads((tmp_path / "ddp" / "training_summary.json").read_text())["hardware"]
    assert result.stdout.count("Saved the trained pipeline") == 1


@pytest.mark.parametrize("name, mode", [("flowers", "RGB"), ("pets", "RGB"), ("mnist", "L")])
def test_shipped_configs_train_on_local_data_of_their_hub_schema(tmp_path, name, mode):
    """The Hub datasets can't be downloaded here: the same loading path runs on a local parquet copy
    with the same columns (an `image` column, a `label` column) and image mode."""
    from datasets import ClassLabel, Dataset, Features, Image

    config_file = ROOT / f"configs/{name}.yaml"
    hub_config = parse_config(["--config", str(config_file)])
    rng = np.random.default_rng(0)
    shape = (70, 90, 3) if mode == "RGB" else (28, 28)  # not square, not the training size
    images = [PIL.Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode) for _ in range(6)]
    (tmp_path / "data").mkdir()
    Dataset.from_dict({hub_config.image_column: images, "label": [0, 1, 2, 0, 1, 2]},
                      features=Features({hub_config.image_column: Image(), "label": ClassLabel(num_classes=10)})
                      ).to_parquet(str(tmp_path / "data" / "train.parquet"))
    out = train(parse_config([
        "--config", str(config_file), "--dataset_name", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
        "--max_train_steps", "1", "--train_batch_size", "3", "--num_grid_images", "1", "--grid_inference_steps", "1",
        "--logger", "none", "--dataloader_num_workers", "0", "--mixed_precision", "no",
    ]))
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert pipe.unet.config.sample_size == hub_config.resolution
    assert pipe.unet.config.in_channels == (3 if mode == "RGB" else 1)
    assert (pipe.unet.config.num_class_embeds is not None) == (name == "mnist")


@pytest.mark.parametrize("min_decay", [None, 0.5])
def test_ema_min_decay_sets_the_ema_weights_and_an_unreachable_decay_is_reported(tmp_path, caplog, min_decay):
    # Two steps with ema_decay 0.5. diffusers' EMAModel copies the weights at the first update and then
    # uses min((1 + s) / (10 + s), decay) = 2/11 at the second, unless ema_min_decay holds it at 0.5.
    extra = ["--ema_min_decay", min_decay] if min_decay is not None else []
    with caplog.at_level("WARNING"):
        out = train(config_for(tmp_path, "--max_train_steps", 2, "--checkpointing_steps", 1, "--ema_decay", 0.5,
                               *extra))
    reported = [r.getMessage() for r in caplog.records if "ema_decay=0.5 is not reached" in r.getMessage()]
    assert len(reported) == (1 if min_decay is None else 0)
    decay = 0.5 if min_decay is not None else 2 / 11
    first, second = (load_file(str(out / f"checkpoint-{s}" / "model.safetensors")) for s in (1, 2))
    ema = unet_weights(out)
    assert any((second[k] != first[k]).any() for k in ema)  # the weights moved, so the average is informative
    for key in ema:
        torch.testing.assert_close(ema[key], decay * first[key] + (1 - decay) * second[key])


def test_ema_power_sets_a_power_function_warm_up_and_the_card_states_it(tmp_path, caplog):
    # ema_power 1, ema_inv_gamma 1: EMAModel copies the weights at the first update, then keeps
    # 1 - (1 + s)^-1 of the average at update s + 1: 1/2 at the second, 2/3 at the third, far below the cap.
    from denoising_diffusion.publishing import render_model_card

    with caplog.at_level("WARNING"):
        out = train(config_for(tmp_path, "--max_train_steps", 3, "--checkpointing_steps", 1, "--ema_decay", 0.9999,
                               "--ema_power", 1, "--ema_inv_gamma", 1))
    assert not [r for r in caplog.records if "is not reached" in r.getMessage()]  # meant to keep growing
    w1, w2, w3 = (load_file(str(out / f"checkpoint-{s}" / "model.safetensors")) for s in (1, 2, 3))
    ema = unet_weights(out)
    assert any((w3[k] != w2[k]).any() for k in ema) and any((w2[k] != w1[k]).any() for k in ema)
    for key in ema:
        second = 0.5 * w1[key] + 0.5 * w2[key]
        torch.testing.assert_close(ema[key], 2 / 3 * second + 1 / 3 * w3[key])
    assert "EMA weights (decay 1 - (1 + s / 1) ^ -1 at step s, capped at 0.9999; 0.6667 by the last step)" in (
        render_model_card(out).text)


@pytest.mark.parametrize("args", [("--ema_decay", 1.0), ("--ema_min_decay", 0.9999), ("--ema_min_decay", -0.1),
                                  ("--ema_power", 0), ("--ema_inv_gamma", -1)])
def test_bad_ema_settings_are_rejected_by_name(args):
    with pytest.raises(ConfigError, match=args[0].lstrip("-")):
        parse_config(TINY + list(map(str, args)))


class Recorder(Callback):
    """Records the hooks it sees; its state (the steps seen) goes through checkpoints."""

    def __init__(self):
        self.events, self.steps, self.loaded = [], [], None

    def on_train_begin(self, trainer, step):
        self.events.append(("begin", step))

    def on_step_end(self, trainer, step):
        self.steps.append(step)

    def on_checkpoint(self, trainer, step, path):
        self.events.append(("checkpoint", step, path.name))

    def on_epoch_end(self, trainer, epoch, step):
        self.events.append(("epoch", epoch, step))

    def on_save(self, trainer, pipe):
        self.events.append(("save", (trainer.output_dir / "model_index.json").exists()))

    def on_train_end(self, trainer, step):
        self.events.append(("end", step, (trainer.output_dir / "README.md").exists()))

    def state_dict(self):
        return {"recorded_steps": list(self.steps)}

    def load_state_dict(self, state):
        self.loaded = state.get("recorded_steps")

    def summary(self):
        return {"recorded_steps": len(self.steps)}


def test_callbacks_see_every_hook_in_order_and_their_state_survives_a_resume(tmp_path):
    # 40 images, batch 8: 5 steps per epoch; 7 steps = a full epoch and part of the next.
    first = Recorder()
    common = ["--max_train_steps", 7, "--checkpointing_steps", 3]
    with pytest.raises(KeyboardInterrupt):
        train(config_for(tmp_path, *common), callbacks=[first, KillAfterCheckpoint(6)])
    assert first.events == [("begin", 0), ("checkpoint", 3, "checkpoint-3"), ("epoch", 0, 5),
                            ("checkpoint", 6, "checkpoint-6")]
    second = Recorder()
    out = train(config_for(tmp_path, *common, "--resume_from_checkpoint", "latest"), callbacks=[second])
    assert second.loaded == [1, 2, 3, 4, 5]  # what it had seen when checkpoint-6 was written (before step 6's hook)
    assert second.events == [("begin", 6), ("epoch", 1, 7), ("save", True), ("end", 7, True)]
    assert second.steps == [7]
    assert json.loads((out / "training_summary.json").read_text())["recorded_steps"] == 1
