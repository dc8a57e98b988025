import os
import subprocess
import sys

import torch
from huggingface_hub import ModelCard

from fake_hub import FakeHub
from test_training import ROOT, TINY

SECRET = "hf_test_secret_token_0123456789"


def run(args, hub, tmp_path, check=True, cwd=None):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_XET": "1",
           "TQDM_DISABLE": "1"}
    env.pop("HF_TOKEN", None)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


SAMPLE = """
import sys, torch
from denoising_diffusion import CosineDDIMPipeline
pipe = CosineDDIMPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
torch.save(pipe(batch_size=3, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="pt").images, sys.argv[2])
"""


def test_card_renders_and_loads(trained):
    card = ModelCard.load(str(trained / "README.md"))
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert "ddim" in card.data.tags
    text = card.text
    assert 'CosineDDIMPipeline.from_pretrained("' in text and "trust_remote_code=True" in text
    assert "![Samples" in text and "(samples.png)" in text and (trained / "samples.png").exists()
    assert "Training time:" in text and "AMD" in text or "cores" in text
    assert "loss: mae" in text  # the training configuration is embedded
    # 3 steps: EMAModel's warm-up (1 + s) / (10 + s) reached 3/12 at the last update, far below the 0.999 cap
    assert "EMA weights (decay capped at 0.999; EMAModel's warm-up reached 0.2500 by the last step)" in text
    assert "{{" not in text


def test_card_states_a_constant_ema_decay_as_trained(tmp_path):
    from denoising_diffusion.publishing import render_model_card
    from denoising_diffusion.training import parse_config, train

    out = train(parse_config(TINY + ["--output_dir", str(tmp_path / "run"), "--max_train_steps", "2",
                                     "--ema_decay", "0.9", "--ema_min_decay", "0.9"]))
    assert "EMA weights (decay 0.9)" in render_model_card(out).text


def test_push_then_load_by_repo_id_through_the_hub_api(trained, tmp_path):
    with FakeHub() as hub:
        result = run(["-m", "denoising_diffusion.hub", "push", str(trained), "--repo_id", "someone/digits-tiny",
                      "--token", SECRET], hub, tmp_path)
        assert "Pushed" in result.stdout
        files = set(hub.repos["someone/digits-tiny"]["files"])
        expected = {"model_index.json", "pipeline_cosine_ddim.py", "pipeline_saving.py", "guidance.py", "inversion.py",
                    "README.md", "samples.png",
                    "training_config.yaml", "training_summary.json", "unet/config.json",
                    "unet/diffusion_pytorch_model.safetensors", "unet/unet_continuous.py", "unet/noise_schedule.py",
                    "scheduler/scheduler_config.json", "scheduler/scheduling_cosine_ddim.py",
                    "scheduler/noise_schedule.py"}
        assert files == expected  # checkpoints and logs stay local
        uploaded = hub.repos["someone/digits-tiny"]["files"]["README.md"]
        assert uploaded == (trained / "README.md").read_bytes()  # the local card is rendered for the repo too
        assert b'CosineDDIMPipeline.from_pretrained("someone/digits-tiny")' in uploaded
        assert str(trained).encode() not in uploaded  # no local path reaches the Hub page
        assert all(r["authorization"] == f"Bearer {SECRET}" for r in hub.requests if r["method"] == "POST")

        run(["-c", SAMPLE, "someone/digits-tiny", str(tmp_path / "hub.pt")], hub, tmp_path)
    run_local = subprocess.run([sys.executable, "-c", SAMPLE, str(trained), str(tmp_path / "local.pt")],
                               capture_output=True, text=True)
    assert run_local.returncode == 0, run_local.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "hub.pt"), torch.load(tmp_path / "local.pt"))


def test_failed_push_keeps_files_and_prints_the_retry_command(trained, tmp_path):
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    with FakeHub() as hub:
        hub.fail_commits = True
        result = run(["-m", "denoising_diffusion.hub", "push", str(trained), "--repo_id", "someone/broken",
                      "--token", SECRET], hub, tmp_path, check=False)
    assert result.returncode != 0
    assert f"retry with: python -m denoising_diffusion.hub push {trained} --repo_id someone/broken" in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert sorted(p.relative_to(trained) for p in trained.rglob("*")) == before


def test_training_with_push_to_hub_never_writes_the_token(tmp_path):
    out = tmp_path / "pushed-run"
    with FakeHub() as hub:
        run([str(ROOT / "train_ddim.py"), *TINY, "--output_dir", str(out), "--max_train_steps", "2",
             "--checkpointing_steps", "1", "--push_to_hub", "--hub_model_id", "someone/pushed-run",
             "--hub_token", SECRET, "--hub_push_checkpoints", "--logger", "tensorboard"], hub, tmp_path)
        repo = hub.repos["someone/pushed-run"]
        assert "unet/diffusion_pytorch_model.safetensors" in repo["files"] and "README.md" in repo["files"]
        assert len(repo["commits"]) == 3  # checkpoint 1, checkpoint 2 (in the background), final
        card = repo["files"]["README.md"].decode()
        assert 'from_pretrained("someone/pushed-run")' in card
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for data in repo["files"].values():
        assert SECRET.encode() not in data
    assert "hub_token" not in (out / "training_config.yaml").read_text()


def test_pipeline_push_to_hub_uploads_the_code_too(trained, tmp_path):
    code = f"""
from denoising_diffusion import CosineDDIMPipeline
pipe = CosineDDIMPipeline.from_pretrained({str(trained)!r})
pipe.push_to_hub("someone/via-pipeline", token={SECRET!r})
"""
    with FakeHub() as hub:
        run(["-c", code], hub, tmp_path)
        files = set(hub.repos["someone/via-pipeline"]["files"])
        card = hub.repos["someone/via-pipeline"]["files"]["README.md"].decode()
        assert "CosineDDIMPipeline.from_pretrained('someone/via-pipeline')" in card
    assert {"pipeline_cosine_ddim.py", "unet/unet_continuous.py", "scheduler/scheduling_cosine_ddim.py",
            "unet/diffusion_pytorch_model.safetensors", "model_index.json", "README.md"} <= files


def test_failed_push_at_the_end_of_training_keeps_the_run_and_says_how_to_retry(tmp_path):
    out = tmp_path / "run"
    with FakeHub() as hub:
        hub.fail_commits = True
        result = run([str(ROOT / "train_ddim.py"), *TINY, "--output_dir", str(out), "--max_train_steps", "2",
                      "--push_to_hub", "--hub_model_id", "someone/run", "--hub_token", SECRET], hub, tmp_path, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"retry with: python -m denoising_diffusion.hub push {out} --repo_id someone/run" in result.stderr
    assert (out / "model_index.json").exists() and (out / "README.md").exists()


def test_a_failed_checkpoint_push_still_pushes_the_final_pipeline_and_says_how_to_retry(tmp_path):
    out = tmp_path / "run"
    with FakeHub() as hub:
        hub.fail_commits = "Checkpoint 1"  # the background push of checkpoint-1 fails, the others go through
        result = run([str(ROOT / "train_ddim.py"), *TINY, "--output_dir", str(out), "--max_train_steps", "2",
                      "--checkpointing_steps", "1", "--push_to_hub", "--hub_push_checkpoints",
                      "--hub_model_id", "someone/run", "--hub_token", SECRET], hub, tmp_path, check=False)
        repo = hub.repos["someone/run"]
        assert "model_index.json" in repo["files"] and len(repo["commits"]) == 2  # checkpoint 2 and the final push
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "1 checkpoint push(es) failed" in result.stderr
    assert f"retry with: python -m denoising_diffusion.hub push {out / 'checkpoint-1' / 'pipeline'} --repo_id someone/run" in result.stderr
    assert (out / "checkpoint-1" / "pipeline" / "model_index.json").exists() and (out / "model_index.json").exists()


def test_transient_hub_errors_are_retried_and_a_checkpoint_push_that_fails_never_stops_training(tmp_path):
    out = tmp_path / "run"
    with FakeHub() as hub:
        hub.unavailable = 2  # the first two requests (checkpoint-1's repo creation, then its retry) answer 503
        run([str(ROOT / "train_ddim.py"), *TINY, "--output_dir", str(out), "--max_train_steps", "2",
             "--checkpointing_steps", "1", "--push_to_hub", "--hub_push_checkpoints", "--hub_model_id", "someone/run",
             "--hub_token", SECRET], hub, tmp_path)
        assert len(hub.repos["someone/run"]["commits"]) == 3  # both checkpoints and the final push went through
        assert sum(r["path"] == "/api/repos/create" for r in hub.requests) >= 3
    with FakeHub() as hub:
        hub.unavailable = 10**6  # the Hub stays away
        result = run([str(ROOT / "train_ddim.py"), *TINY, "--output_dir", str(tmp_path / "away"), "--max_train_steps",
                      "2", "--checkpointing_steps", "1", "--push_to_hub", "--hub_push_checkpoints", "--hub_model_id",
                      "someone/away", "--hub_token", SECRET], hub, tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (tmp_path / "away" / "model_index.json").exists()  # training ran to the end and saved its pipeline
    assert result.stderr.count("A checkpoint push failed") == 2  # each reported with its retry command
    assert f"retry with: python -m denoising_diffusion.hub push {tmp_path / 'away'} --repo_id someone/away" in result.stderr
