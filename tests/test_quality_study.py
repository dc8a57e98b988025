"""benchmarks/quality.py, the sample-quality study, end to end on a tiny spec (it trains through the
normal training path, tunes guidance on one noise and reports on another)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from test_training import ROOT

SPEC = {
    "base_config": str(ROOT / "configs" / "digits_keras.yaml"),
    "overrides": {"resolution": 8, "max_train_steps": 4, "train_batch_size": 8, "max_train_samples": 40,
                  "logger": "none", "checkpointing_steps": 1000, "save_images_steps": 1000, "num_grid_images": 4,
                  "unet": {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}},
    "seeds": [1, 2],
    "variants": {"plain": {"sampling": {"num_inference_steps": 5}},
                 "guided": {"guide": "ema_snapshot", "guide_fraction": 0.5,
                            "sampling": {"scheduler": "dpm_solver", "num_inference_steps": 3, "autoguidance_scale": 1.5}}},
    "evaluation": {
        "features": "digits", "num_samples": 30, "budget": 6,
        "samplers": {"ddim": {"scheduler": "ddim"}, "dpm_solver": {"scheduler": "dpm_solver"},
                     "dpm_3": {"scheduler": "dpm_solver", "steps": 3},
                     "dpm_3_karras": {"scheduler": "dpm_solver", "steps": 3, "timestep_spacing": "karras"},
                     "stored": {"stored": True}},  # the saved pipeline's own scheduler and defaults: pipe()
        "tune": {"scheduler": "dpm_solver", "autoguidance_scale": [1.5, 2.0],
                 "guidance_interval": [[0.0, 1.0], [1.0, None]], "select": "recognised", "reference": "dpm_solver"},
    },
}


def test_the_study_trains_each_seed_tunes_on_other_noise_and_reports_at_the_budget(tmp_path):
    spec = {**SPEC, "output_dir": str(tmp_path / "runs")}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "BENCHMARK_RESULTS": str(tmp_path / "results"), "TQDM_DISABLE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), str(tmp_path / "tiny.yaml")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = json.loads(next((tmp_path / "results").glob("quality-tiny-*.json")).read_text())
    assert out["budget"] == 6 and out["noise"] == {"report": 0, "tuning": 1}
    real = out["real"]
    assert 0.8 < real["held_out_digits_recognised"] <= 1 and 0.8 < real["held_out_digits_recognised_8x8"] <= 1
    assert real["real_vs_real_kid_std"] > 0 and real["nn_reference"] > 0
    plain, guided = out["variants"]["plain"], out["variants"]["guided"]
    assert "tuned" not in plain["samplers"] and "tuning" not in plain  # nothing to tune without a guide
    for variant in (plain, guided):
        assert [run["seed"] for run in variant["samplers"]["ddim"]["per_seed"]] == [1, 2]
        assert variant["samplers"]["ddim"]["mean"]["network_evaluations"] == 6  # as many steps as fit
        assert variant["samplers"]["dpm_3"]["mean"]["steps"] == 3
        for sampler in variant["samplers"].values():
            mean = sampler["mean"]
            assert mean["network_evaluations"] <= 6 and len(mean["class_balance"]) == 10
            assert {"kid", "kid_std", "kid_seed_spread", "recognised", "nn_ratio"} <= set(mean)
    assert (plain["samplers"]["stored"]["mean"]["steps"], plain["samplers"]["stored"]["mean"]["network_evaluations"]) \
        == (5, 5)
    stored = guided["samplers"]["stored"]["mean"]  # 3 autoguided steps: two evaluations each
    assert (stored["steps"], stored["network_evaluations"]) == (3, 6)
    assert stored["kid"] != guided["samplers"]["dpm_3"]["mean"]["kid"]  # the same steps and solver, but autoguided
    for variant in (plain, guided):  # other step times than the saved log-SNR spacing: other samples
        assert variant["samplers"]["dpm_3_karras"]["mean"]["kid"] != variant["samplers"]["dpm_3"]["mean"]["kid"]
    assert len(guided["tuning"]) == 4
    tuned = guided["samplers"]["tuned"]
    assert tuned["settings"] in [candidate["sampler"] for candidate in guided["tuning"]]
    # a guided step costs two evaluations: fewer steps fit in the budget than unguided
    assert tuned["mean"]["steps"] < 6
    assert [t["guide"]["step"] for t in guided["training"]] == [2, 2]
    assert "KID" in result.stdout and "tuned" in result.stdout

    # a later screen of one variant, seed and sampler merges into the same file: the rest is kept
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), str(tmp_path / "tiny.yaml"),
                            "--variants", "plain", "--seeds", "3", "--samplers", "ddim"],
                           capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    merged = json.loads(next((tmp_path / "results").glob("quality-tiny-*.json")).read_text())
    assert merged["seeds"] == [1, 2, 3]
    ddim = merged["variants"]["plain"]["samplers"]["ddim"]
    assert [run["seed"] for run in ddim["per_seed"]] == [1, 2, 3]  # merged by seed: the earlier seeds are kept
    assert ddim["per_seed"][:2] == plain["samplers"]["ddim"]["per_seed"]
    assert ddim["mean"]["kid"] == pytest.approx(sum(run["kid"] for run in ddim["per_seed"]) / 3)
    assert [t["seed"] for t in merged["variants"]["plain"]["training"]] == [1, 2, 3]
    assert merged["variants"]["plain"]["samplers"]["dpm_3"] == plain["samplers"]["dpm_3"]
    assert merged["variants"]["guided"] == guided


def test_a_stored_sampler_names_only_what_the_saved_defaults_do_not_decide():
    quality = _quality_module()
    quality.check_stored({"stored": True, "conditional": True, "steps": 4})
    for bad in ({"stored": True, "scheduler": "ddim"}, {"stored": True, "guidance_scale": 3.0},
                {"stored": True, "conditional": "yes"}, {"stored": True, "timestep_spacing": "karras"}):
        with pytest.raises(ValueError, match="A stored sampler uses the saved pipeline's scheduler and sampling"):
            quality.check_stored(bad)

    class Pipe:  # what `evaluations` asks of a pipeline
        def network_evaluations(self, steps=None, *args, class_labels=None):
            return {"steps": steps, "args": args, "class_labels": class_labels}

    assert quality.evaluations(Pipe(), {"stored": True, "conditional": True}, None, None) == \
        {"steps": None, "args": (), "class_labels": True}
    assert quality.evaluations(Pipe(), {"stored": True}, None, None)["class_labels"] is None  # as pipe(): drawn if stored


def test_a_tune_block_crosses_every_listed_value_including_the_step_spacing():
    quality = _quality_module()
    block = {"name": "t", "select": "kid", "scheduler": "dpm_solver", "conditional": "prior",
             "autoguidance_scale": [1.5, 2.0], "guidance_interval": [[0.0, None]],
             "timestep_spacing": ["log_snr", "karras"]}
    grid = quality.tuning_grid(block)
    assert len(grid) == 4
    assert {(c["autoguidance_scale"], c["timestep_spacing"]) for c in grid} == \
        {(1.5, "log_snr"), (1.5, "karras"), (2.0, "log_snr"), (2.0, "karras")}
    assert all(c["scheduler"] == "dpm_solver" and c["conditional"] == "prior" and "select" not in c for c in grid)


def test_machine_tag_names_the_gpu_or_the_cpu_family(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    for cpu, tag in (("Intel(R) Xeon(R) Processor", "cpu2-intel-xeon"), ("AMD EPYC 7B13", "cpu2-amd-epyc-7b13"),
                     (None, "cpu2")):
        monkeypatch.setattr(common, "machine_info", lambda cpu=cpu: {"gpu": None, "cores": 2, "cpu": cpu})
        assert common.machine_tag() == tag
    monkeypatch.setattr(common, "machine_info", lambda: {"gpu": "NVIDIA H200", "cores": 16, "cpu": "x"})
    assert common.machine_tag() == "nvidia-h200"


def test_merge_variant_replaces_rows_by_seed_and_keeps_what_was_not_run():
    quality = _quality_module()

    def row(seed, kid):
        return {"seed": seed, "kid": kid, "kid_std": 0.1, "nn_ratio": 1.0}

    def sampler(settings, *rows):
        return {"settings": settings, "per_seed": list(rows), "mean": quality.mean_scores(list(rows))}

    before = {"training": [{"seed": 1}, {"seed": 2}],
              "samplers": {"a": sampler({"steps": 5}, row(1, 1.0), row(2, 2.0)),
                           "b": sampler({"steps": 9}, row(1, 5.0)),
                           "tuned": sampler({"guidance_scale": 2.0}, row(1, 3.0), row(2, 3.0))},
              "tuning": [{"block": "tuned", "sampler": {"guidance_scale": 2.0}, "mean": {}}]}
    now = {"training": [{"seed": 2, "new": True}, {"seed": 3}],
           "samplers": {"a": sampler({"steps": 5}, row(2, 4.0), row(3, 6.0)),
                        "tuned": sampler({"guidance_scale": 3.0}, row(2, 7.0), row(3, 7.0))},
           "tuning": [{"block": "tuned", "sampler": {"guidance_scale": 3.0}, "mean": {}}]}
    merged = quality.merge_variant(before, now)
    assert [r["kid"] for r in merged["samplers"]["a"]["per_seed"]] == [1.0, 4.0, 6.0]  # seed 2 replaced, 1 kept
    assert merged["samplers"]["a"]["mean"]["kid"] == pytest.approx(11 / 3)
    assert merged["samplers"]["a"]["mean"]["kid_seed_spread"] == pytest.approx(5.0)
    assert merged["samplers"]["b"] == before["samplers"]["b"]  # not run now: kept
    assert merged["samplers"]["tuned"] == now["samplers"]["tuned"]  # chose other settings: only the new rows
    assert merged["training"] == [{"seed": 1}, {"seed": 2, "new": True}, {"seed": 3}]
    assert merged["tuning"] == now["tuning"]
    assert quality.merge_variant({}, now)["samplers"] == now["samplers"]


def _quality_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality_study", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_blocks_are_named_and_select_the_requested_class_within_the_reference_kid():
    quality = _quality_module()
    assert [b["name"] for b in quality.tuning_blocks({"guidance_scale": [2.0]})] == ["tuned"]
    blocks = quality.tuning_blocks([{"name": "a", "guidance_scale": [2.0, 3.0], "conditional": True,
                                     "select": "requested", "reference": "cfg"}, {"name": "b"}])
    grid = quality.tuning_grid(blocks[0])
    assert grid == [{"conditional": True, "guidance_scale": 2.0}, {"conditional": True, "guidance_scale": 3.0}]
    with pytest.raises(ValueError, match="distinct names"):
        quality.tuning_blocks([{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValueError, match="select must be one of"):
        quality.tuning_blocks({"select": "fid"})
    # the most requested categories recognised whose KID stays within the reference's: not the strongest guidance
    candidates = [({"guidance_scale": 3.0}, {"kid": 2.0, "requested_recognised": 0.40}),
                  ({"guidance_scale": 5.0}, {"kid": 2.4, "requested_recognised": 0.50}),
                  ({"guidance_scale": 7.0}, {"kid": 3.5, "requested_recognised": 0.60})]
    chosen = quality.select(blocks[0], candidates, {"kid": 2.5}, floor=0.0)
    assert chosen == {"guidance_scale": 5.0}
    assert quality.select(blocks[0], candidates, {"kid": 1.0}, floor=0.0) == {"guidance_scale": 3.0}  # lowest KID
    assert quality.select({"select": "kid"}, candidates, None, floor=0.0) == {"guidance_scale": 3.0}
    # min_nn_ratio: a candidate closer to the training images than unseen real ones are is not chosen
    nearer = [({"guidance_scale": 1.2}, {"kid": 1.0, "recognised": 0.95, "nn_ratio": 1.02}),
              ({"guidance_scale": 1.5}, {"kid": 1.2, "recognised": 0.98, "nn_ratio": 0.97})]
    block = {"select": "recognised", "reference": "x"}
    assert quality.select(block, nearer, {"kid": 2.0}, floor=0.0) == {"guidance_scale": 1.5}
    assert quality.select({**block, "min_nn_ratio": 1.0}, nearer, {"kid": 2.0}, floor=0.0) == {"guidance_scale": 1.2}


def test_blank_samples_counts_blank_samples_by_the_starting_noises_mean(tmp_path):
    import re

    from conftest import tiny_unet
    from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler

    CosineDDIMPipeline(tiny_unet(num_class_embeds=4), CosineDDIMScheduler(),
                       sampling_defaults={"num_inference_steps": 2}).save_pretrained(tmp_path / "pipe")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "blank_samples.py"), "--model",
                             str(tmp_path / "pipe"), "--config", str(ROOT / "configs" / "digits.yaml"),
                             "--num_samples", "12", "--batch_size", "5"],
                            capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"real images \(1797\): blank 0\.\d{3}", result.stdout)
    for call in ("pipe()", "pipe(class_labels=...)"):
        line = next(row for row in result.stdout.splitlines() if row.startswith(call + ":"))
        assert sum(int(n) for n in re.findall(r"of (\d+);", line)) == 12  # every sample in one bin of the mean
        blank = float(re.search(r"blank (\d\.\d+)", line).group(1))
        assert 0.0 <= blank <= 1.0


def test_ema_lengths_saves_each_power_ema_as_the_trainer_option_would_train_it(tmp_path):
    # One run carries a power-function EMA (gamma 2) beside the trainer's own; its saved pipeline must hold
    # what a run with --ema_power 1 --ema_inv_gamma 3 saves: the same EMA weights and the same guide snapshot.
    from safetensors.torch import load_file

    from denoising_diffusion.training import parse_config, train

    config = yaml.safe_load((ROOT / "configs" / "digits_keras.yaml").read_text())
    config.update({k: v for k, v in SPEC["overrides"].items() if k != "max_train_steps"})
    config.update({"guide": "ema_snapshot", "guide_fraction": 0.5, "sampling": {"num_inference_steps": 3}})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    spec = {**SPEC, "output_dir": str(tmp_path / "unused"), "evaluation": {
        "features": "digits", "num_samples": 30, "budget": 6, "samplers": {"stored": {"stored": True}}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "BENCHMARK_RESULTS": str(tmp_path / "results"), "TQDM_DISABLE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ema_lengths.py"), "--config",
                             str(tmp_path / "tiny.yaml"), "--spec", str(tmp_path / "spec.yaml"), "--seeds", "5",
                             "--gammas", "2", "--max_train_steps", "4", "--samplers", "stored",
                             "--output_dir", str(tmp_path / "runs")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = json.loads(next((tmp_path / "results").glob("ema_lengths-tiny-*.json")).read_text())
    assert set(out["emas"]) == {"trainer", "gamma2"}
    assert out["emas"]["gamma2"]["sigma_rel"] == pytest.approx((3 / (16 * 5)) ** 0.5)
    assert "| gamma2 |" in result.stdout
    saved = tmp_path / "runs" / "gamma2-seed5" / "unet" / "diffusion_pytorch_model.safetensors"
    before = saved.stat().st_mtime_ns
    again = subprocess.run([*result.args, "--reuse"], capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert saved.stat().st_mtime_ns == before  # scored again, not trained again
    assert json.loads(next((tmp_path / "results").glob("ema_lengths-tiny-*.json")).read_text())["emas"] == out["emas"]

    option = train(parse_config(["--config", str(tmp_path / "tiny.yaml"), "--max_train_steps", "4", "--seed", "5",
                                 "--logger", "none", "--ema_power", "1", "--ema_inv_gamma", "3",
                                 "--output_dir", str(tmp_path / "option")]))
    weights = "diffusion_pytorch_model.safetensors"
    for part in ("unet", "guide_unet"):
        expected = load_file(str(option / part / weights))
        carried = load_file(str(tmp_path / "runs" / "gamma2-seed5" / part / weights))
        default = load_file(str(tmp_path / "runs" / "trainer-seed5" / part / weights))
        assert any(not torch.allclose(expected[k], default[k]) for k in expected)  # another average than the default's
        for key in expected:
            torch.testing.assert_close(carried[key], expected[key])
