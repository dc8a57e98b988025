import json
import subprocess
import sys

import pytest
import torch
import yaml

from denoising_diffusion.digits import digits_split
from denoising_diffusion.evaluation.features import DigitsFeatures, cache_dir, feature_extractor, load_digits_classifier
from denoising_diffusion.evaluation.kid import extract_features, kid_fid


def test_digits_classifier_is_accurate_and_cached():
    model, accuracy = load_digits_classifier()
    assert accuracy >= 0.95
    assert (cache_dir() / "digits_classifier_v1.safetensors").exists()
    again, accuracy_again = load_digits_classifier()
    assert accuracy_again == accuracy
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    _, x_test, _, y_test = digits_split()
    upscaled = torch.nn.functional.interpolate(x_test, size=(16, 16), mode="bilinear")  # as generated images are
    with torch.no_grad():
        assert (again(upscaled).argmax(1) == y_test).float().mean() >= 0.9


def test_kid_separates_real_from_unlike_images():
    _, x_test, _, _ = digits_split()
    features = DigitsFeatures()
    real = extract_features(x_test, features)
    half = len(real) // 2
    same = kid_fid(real[:half], real[half:], subset_size=200)
    blurred = extract_features(torch.nn.functional.avg_pool2d(x_test, 3, 1, 1), features)
    noise = extract_features(torch.rand(len(x_test), 1, 8, 8, generator=torch.Generator().manual_seed(0)), features)
    worse = kid_fid(real[:half], blurred[half:], subset_size=200)
    worst = kid_fid(real[:half], noise[half:], subset_size=200)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3  # indistinguishable from zero
    for other in (worse, worst):
        assert other["kid"] > 20 * (abs(same["kid"]) + same["kid_std"])
        assert other["fid"] > 5 * same["fid"]


def test_kid_subsets_are_seeded_and_leave_the_global_generator_alone():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=generator, dtype=torch.float64)
    fake = torch.randn(300, 16, generator=generator, dtype=torch.float64) + 0.3
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = kid_fid(real, fake, subsets=20, subset_size=100)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert kid_fid(real, fake, subsets=20, subset_size=100) == first  # same features, same KID
    other = kid_fid(real, fake, subsets=20, subset_size=100, seed=1)
    assert other["kid"] != first["kid"] and other["fid"] == first["fid"]  # other subsets; FID has none
    assert first["kid"] > 3 * first["kid_std"] > 0  # a real shift is measured


def test_recognised_fraction_is_high_on_real_digits_and_low_on_degraded_ones():
    _, x_test, _, _ = digits_split()
    features = DigitsFeatures()
    real = features.held_out_recognised_fraction()
    assert real == features.recognised_fraction(x_test) and 0.9 <= real < 1.0
    # a stricter threshold recognises fewer
    assert features.recognised_fraction(x_test, threshold=0.999) < real <= features.recognised_fraction(x_test, 0.5)
    # the same digits heavily blurred, or pixel noise, are not recognised with confidence nearly as often
    blurred = torch.nn.functional.avg_pool2d(x_test, 5, 1, 2)
    noise = torch.rand(len(x_test), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert features.recognised_fraction(blurred) < real - 0.2
    assert features.recognised_fraction(noise) < real - 0.2


def test_inception_without_weights_or_package_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    with pytest.raises(RuntimeError, match="(torch-fidelity|inception_weights)"):
        feature_extractor("inception")
    with pytest.raises(ValueError, match="Unknown features 'clip'"):
        feature_extractor("clip")


def test_evaluate_command_prints_a_table_and_writes_json(trained, tmp_path):
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "-m", "denoising_diffusion.evaluate", "--model", str(trained), "--steps", "2", "4",
         "--num_samples", "40", "--output", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| steps | network evaluations | KID | FID | time (s) | images/s | recognised (p >= 0.9) |" in result.stdout
    assert "| real vs real |" in result.stdout
    data = json.loads(out.read_text())
    assert [row["steps"] for row in data["results"]] == [2, 4]
    assert [row["network_evaluations"] for row in data["results"]] == [2, 4]  # no guide: one per step
    assert data["features"] == "digits" and data["num_real"] == 1797  # the whole dataset the model was trained on
    assert all(row["kid"] > data["real_vs_real"]["kid"] for row in data["results"])
    assert data["feature_extractor_test_accuracy"] >= 0.95
    assert all(0.0 <= row["recognised"] <= 1.0 for row in data["results"])
    assert data["real_vs_real"]["recognised"] >= 0.9


def test_kid_every_epoch_during_training(tmp_path):
    from denoising_diffusion.training import parse_config, train
    from test_training import TINY

    # 40 images / batch 8 = 5 steps per epoch; 10 steps = 2 epochs = 2 evaluations.
    out = train(parse_config(TINY + ["--output_dir", str(tmp_path / "run"), "--max_train_steps", "10",
                                     "--eval_every_epochs", "1", "--eval_num_samples", "16",
                                     "--eval_inference_steps", "2"]))
    history = json.loads((out / "training_summary.json").read_text())["kid_history"]
    assert [h["epoch"] for h in history] == [1, 2] and [h["step"] for h in history] == [5, 10]
    assert all(h["kid"] == h["kid"] and h["fid"] > 0 for h in history)  # finite numbers


def test_sweep_trains_each_combination_and_tabulates(tmp_path):
    from denoising_diffusion.sweep import run_sweep
    from test_training import ROOT

    spec = {
        "base_config": str(ROOT / "configs/digits.yaml"), "output_dir": str(tmp_path / "grid"),
        "overrides": {"max_train_steps": 2, "resolution": 8, "max_train_samples": 40, "logger": "none",
                      "unet": {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4},
                      "num_grid_images": 4, "grid_inference_steps": 2},
        "grid": {"loss": ["mse", "mae"], "loss_on": ["noise"], "schedule": ["cosine", "linear"]},
        "evaluation": {"num_samples": 24, "inference_steps": 2, "validation_batches": 1, "samples_per_row": 3},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    results = run_sweep(str(path))
    assert [(r["loss"], r["schedule"]) for r in results] == [("mse", "cosine"), ("mse", "linear"),
                                                            ("mae", "cosine"), ("mae", "linear")]
    for combo in ["mse-noise-cosine", "mae-noise-linear"]:
        config = yaml.safe_load((tmp_path / "grid" / combo / "training_config.yaml").read_text())
        assert config["loss"] == combo.split("-")[0] and config["schedule"] == combo.split("-")[2]
    csv_lines = (tmp_path / "grid" / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("loss,loss_on,schedule,noise_loss,image_loss,kid") and len(csv_lines) == 5
    assert "Lowest KID" in (tmp_path / "grid" / "results.md").read_text()
    from PIL import Image

    grid = Image.open(tmp_path / "grid" / "samples.png")
    assert grid.height >= 4 * 48  # one row per run


def test_sweep_reuses_a_run_only_when_its_saved_config_has_the_settings():
    from denoising_diffusion.sweep import matches

    saved = {"loss": "mae", "class_balance": 0.5, "unet": {"block_out_channels": [8, 16], "layers_per_block": 1}}
    assert matches(saved, {"loss": "mae", "unet": {"layers_per_block": 1}})
    assert not matches(saved, {"loss": "mse"})
    assert not matches(saved, {"unet": {"layers_per_block": 2}})
    assert not matches(saved, {"class_balance": 0.0})
    # a config saved before an option existed had the option's default, and only that
    older = {"loss": "mae"}
    assert matches(older, {"class_balance": 0.0}) and not matches(older, {"class_balance": 0.5})
    assert not matches(older, {"no_such_option": 1})


def test_nearest_neighbour_distances_catch_copies_and_leave_one_out_skips_the_image_itself():
    from denoising_diffusion.evaluation.memorisation import nearest_neighbour_distances, nearest_neighbour_ratio

    _, x_test, _, _ = digits_split()
    train, unseen = x_test[:300], x_test[300:]
    assert torch.equal(nearest_neighbour_distances(train[:50], train), torch.zeros(50))  # copies sit on the data
    own = nearest_neighbour_distances(train, train, leave_one_out=True)
    assert own.min() > 0
    manual = torch.stack([torch.cdist(train[i].flatten()[None], torch.cat([train[:i], train[i + 1:]]).flatten(1)).min()
                          for i in range(0, 300, 37)])
    torch.testing.assert_close(own[::37], manual.float())
    copies = nearest_neighbour_ratio(train[:100], train)
    real = nearest_neighbour_ratio(unseen, train)
    assert copies["nn_ratio"] == 0 and 0.8 < real["nn_ratio"] < 1.25  # unseen real digits sit about as far
    with pytest.raises(ValueError, match="must have the same shape"):
        nearest_neighbour_distances(train, torch.nn.functional.interpolate(train, size=(16, 16)))


def test_class_balance_is_one_for_real_digits_and_shows_a_dropped_digit():
    from sklearn.datasets import load_digits

    features = DigitsFeatures()
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    ratios = features.class_balance(images)
    assert all(0.85 < r < 1.15 for r in ratios)
    # real digits the classifier never saw, upscaled as the training data is, are mostly recognised
    assert 0.85 < features.held_out_recognised_fraction(size=16) <= 1
    without_sevens = images[torch.as_tensor(digits.target) != 7]
    ratios = features.class_balance(without_sevens)
    assert ratios[7] < 0.05 and all(r > 1.0 for i, r in enumerate(ratios) if i != 7)
