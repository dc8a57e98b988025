"""benchmarks/data/emoji.py on a tarball laid out like the npm package (emoji.json + img/google/64/),
and the emoji configs training on what it writes through the normal data path."""

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from denoising_diffusion import CosineDDIMPipeline
from denoising_diffusion.training import parse_config, train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "data"))
import emoji  # noqa: E402


def _png(color, alpha):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[16:48, 16:48] = (*color, 255)
    rgba[..., 3] = np.maximum(rgba[..., 3], alpha)
    buffer = io.BytesIO()
    PIL.Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _fake_package(path: Path) -> Path:
    meta = [
        {"image": "1f600.png", "category": "Smileys & Emotion", "short_name": "grinning"},
        {"image": "1f44b.png", "category": "People & Body", "short_name": "wave",
         "skin_variations": {"1F3FB": {"image": "1f44b-1f3fb.png"}}},
        {"image": "1f3fb.png", "category": "Component", "short_name": "skin-tone-2"},
        {"image": "1f1eb-1f1f7.png", "category": "Flags", "short_name": "flag-fr"},
    ]
    files = {"package/emoji.json": json.dumps(meta).encode()}
    colors = [(250, 200, 0), (200, 120, 60), (180, 100, 50), (230, 180, 150), (0, 60, 200)]
    for entry, color in zip(["1f600", "1f44b", "1f44b-1f3fb", "1f3fb", "1f1eb-1f1f7"], colors):
        files[f"package/img/google/64/{entry}.png"] = _png(color, alpha=0)
    tarball = path / "emoji-datasource-google-16.0.0.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tarball


def test_emoji_script_writes_an_rgb_dataset_on_white_with_category_labels(tmp_path):
    dataset = emoji.build(_fake_package(tmp_path), tmp_path / "emoji")
    assert len(dataset) == 4  # the "Component" swatch is left out; the skin-tone variation is kept
    assert dataset.features["label"].names == emoji.CATEGORIES
    by_name = {row["name"]: row for row in dataset}
    assert by_name["wave:1F3FB"]["label"] == emoji.CATEGORIES.index("People & Body")
    assert by_name["flag-fr"]["label"] == emoji.CATEGORIES.index("Flags")
    image = np.asarray(by_name["grinning"]["image"])
    assert image.shape == (64, 64, 3)
    assert (image[0, 0] == 255).all() and tuple(image[32, 32]) == (250, 200, 0)  # transparent -> white


def test_emoji32_config_trains_on_the_written_dataset(tmp_path):
    emoji.build(_fake_package(tmp_path), tmp_path / "emoji")
    for name in ("emoji", "emoji32"):
        config = parse_config(["--config", str(ROOT / f"configs/{name}.yaml"), "--dataset_name", str(tmp_path / "emoji"),
                               "--output_dir", str(tmp_path / name), "--max_train_steps", "1", "--train_batch_size", "2",
                               "--num_grid_images", "1", "--grid_inference_steps", "1", "--logger", "none",
                               "--mixed_precision", "no", "--dataloader_num_workers", "0",
                               "--unet", '{"block_out_channels": [8, 16], "norm_num_groups": 4, "num_class_embeds": 10}'])
        out = train(config)
        pipe = CosineDDIMPipeline.from_pretrained(out)
        assert pipe.unet.config.in_channels == 3 and pipe.unet.config.num_class_embeds == 10
        assert pipe.unet.config.sample_size == {"emoji": 64, "emoji32": 32}[name]
    # emoji32's pipe() draws each category at its training frequency: 1 smiley, 2 people, 1 flag
    expected = [0.0] * len(emoji.CATEGORIES)
    for category, count in {"Smileys & Emotion": 1, "People & Body": 2, "Flags": 1}.items():
        expected[emoji.CATEGORIES.index(category)] = count / 4
    assert pipe.class_prior == pytest.approx(expected)
    assert pipe.config.sampling_defaults["autoguidance_scale"] == 4.0
    # pipe() steps uniformly in t (the saved scheduler), a requested category in log-SNR (its own default)
    assert pipe.scheduler.config.timestep_spacing == "time"
    assert pipe.sampling_scheduler(class_labels_given=True).config.timestep_spacing == "log_snr"
    assert pipe.scheduler.config.min_signal_rate == 0.002 and pipe.scheduler.config.prediction_type == "v_prediction"
