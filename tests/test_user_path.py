"""From a folder of your own images to a Hub page whose code runs: class names that travel, one
config for a folder, cards rendered for the repo they land on (every route), checkpoint export."""

import json
import re
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from conftest import TINY_ARGS
from denoising_diffusion import CosineDDIMPipeline
from denoising_diffusion.hardware import cpu_has_native_bf16
from denoising_diffusion.training import ConfigError, parse_config, train
from fake_hub import FakeHub
from test_hub import SECRET, run
from test_training import ROOT

TINY_UNET = '{"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}'
# configs/images.yaml, shrunk to seconds: 8x8, a tiny UNet, 2 steps
TINY_FOLDER_RUN = ["--resolution", "8", "--train_batch_size", "8", "--logger", "none", "--unet", TINY_UNET,
                   "--num_grid_images", "4", "--grid_inference_steps", "2", "--max_train_steps", "2"]


def class_folder(root, classes=("cat", "dog"), per_class=6):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            PIL.Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def first_python_block(markdown: str) -> str:
    return re.search(r"```python\n(.*?)```", markdown, flags=re.DOTALL).group(1)


def test_a_class_folder_trains_conditionally_and_its_owner_less_push_has_a_card_whose_code_runs(tmp_path):
    images = class_folder(tmp_path / "my_pets")
    workdir = tmp_path / "work"
    workdir.mkdir()
    with FakeHub() as hub:
        run([str(ROOT / "train_ddim.py"), "--config", str(ROOT / "configs/images.yaml"), "--train_data_dir", str(images),
             *TINY_FOLDER_RUN, "--push_to_hub", "--hub_model_id", "my-pets", "--hub_token", SECRET], hub, workdir,
            cwd=workdir)
        out = workdir / "outputs" / "my_pets"  # named after the folder
        config = yaml.safe_load((out / "training_config.yaml").read_text())
        assert config["label_column"] == "label" and config["unet"]["num_class_embeds"] == 3
        assert config["mixed_precision"] == ("bf16" if cpu_has_native_bf16() else "no")  # 'auto' on a CPU
        assert CosineDDIMPipeline.from_pretrained(out).class_names == ["cat", "dog"]
        assert CosineDDIMPipeline.from_pretrained(out).class_prior == [0.5, 0.5]  # sampling.class_prior: dataset
        card = hub.repos["tester/my-pets"]["files"]["README.md"].decode()  # the Hub put it under the token's user
        assert "| 0 | cat |" in card and "| 1 | dog |" in card
        assert str(tmp_path) not in card  # no local path on the Hub page
        code = first_python_block(card)
        assert 'from_pretrained("tester/my-pets")' in code and "class_labels=['cat', 'dog', 'cat', 'dog']" in code
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        (fresh / "card_code.py").write_text(code)
        run([str(fresh / "card_code.py")], hub, fresh, cwd=fresh)  # pasted into a new process, HF_ENDPOINT at the stand-in
    assert PIL.Image.open(fresh / "sample.png").size == (8, 8)


def test_a_folder_without_classes_trains_unconditionally_and_samples_with_no_arguments(tmp_path):
    images = tmp_path / "holiday"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        PIL.Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
    out = train(parse_config(["--config", str(ROOT / "configs/images.yaml"), "--train_data_dir", str(images),
                              "--output_dir", str(tmp_path / "run"), *TINY_FOLDER_RUN]))
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert pipe.unet.config.num_class_embeds is None and pipe.class_prior is None
    assert "class_prior" not in pipe.config.sampling_defaults  # the config's class_prior: dataset has no classes to count
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images.shape == (2, 3, 8, 8)


def test_class_names_travel_into_the_pipeline_and_name_the_classes(tmp_path):
    out = train(parse_config(TINY_ARGS + ["--output_dir", str(tmp_path / "run"), "--label_column", "label",
                                          "--max_train_steps", "2"]))
    pipe = CosineDDIMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.num_class_embeds == 11  # inferred: the ten digits + "no class"
    assert pipe.class_names == [str(i) for i in range(10)]  # the digits' ClassLabel names

    def sample(labels):
        return pipe(batch_size=2, class_labels=labels, generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                    output_type="pt").images

    torch.testing.assert_close(sample(["3", "7"]), sample([3, 7]))
    torch.testing.assert_close(sample("3"), sample(3))
    with pytest.raises(ValueError, match=r"Unknown class names \['cat'\]; this model's classes are \['0', '1'"):
        sample(["cat", "3"])
    with pytest.raises(ValueError, match="class_names needs 10 distinct names"):
        CosineDDIMPipeline(pipe.unet, pipe.scheduler, class_names=["a", "b"])
    with pytest.raises(ConfigError, match=r"class_names has 2 names \(\['a', 'b'\]\), but the UNet has 10 classes"):
        train(parse_config(TINY_ARGS + ["--output_dir", str(tmp_path / "bad"), "--label_column", "label",
                                        "--unet", TINY_UNET[:-1] + ', "num_class_embeds": 11}',
                                        "--max_train_steps", "1", "--class_names", "a", "b"]))


def test_unet_overrides_merge_into_the_config_files_unet_and_the_output_folder_is_named_after_the_data():
    config = parse_config(["--config", str(ROOT / "configs/flowers.yaml"), "--unet", '{"num_class_embeds": 6}',
                           "--label_column", "label"])
    assert config.unet["block_out_channels"] == [32, 64, 96, 128] and config.unet["num_class_embeds"] == 6
    narrower = parse_config(["--config", str(ROOT / "configs/flowers.yaml"), "--unet", '{"block_out_channels": [16, 32]}'])
    assert narrower.unet["down_block_types"] == ["DownBlock2D", "DownBlock2D"]  # the new number of levels
    assert parse_config(["--train_data_dir", "/data/my_images/"]).output_dir == "outputs/my_images"
    assert parse_config([]).output_dir == "outputs/digits"
    assert parse_config(["--config", str(ROOT / "configs/flowers.yaml")]).output_dir == "outputs/flowers"
    with pytest.raises(ConfigError, match="--unet 'widths' is not a JSON mapping"):
        parse_config(["--config", str(ROOT / "configs/flowers.yaml"), "--unet", "widths"])


def test_a_checkpoint_exports_as_the_pipeline_a_finished_run_saves(tmp_path):
    out = train(parse_config(TINY_ARGS + ["--output_dir", str(tmp_path / "run"), "--max_train_steps", "3",
                                          "--checkpointing_steps", "3"]))
    with FakeHub() as hub:
        run(["-m", "denoising_diffusion.hub", "export", str(out / "checkpoint-3"), "--repo_id", "someone/step3",
             "--token", SECRET], hub, tmp_path)
        assert "unet/diffusion_pytorch_model.safetensors" in hub.repos["someone/step3"]["files"]
        assert b'from_pretrained("someone/step3")' in hub.repos["someone/step3"]["files"]["README.md"]
    exported, final = (CosineDDIMPipeline.from_pretrained(p) for p in (tmp_path / "run-step3", out))
    for a, b in zip(exported.unet.state_dict().values(), final.unet.state_dict().values()):
        assert torch.equal(a, b)  # the EMA weights, as the final save
    assert exported.config.image_mean == final.config.image_mean
    (out / "checkpoint-3" / "pipeline.json").unlink()
    result = run(["-m", "denoising_diffusion.hub", "export", str(out / "checkpoint-3")], FakeHub(), tmp_path, check=False)
    assert result.returncode == 1 and "has no pipeline.json" in result.stderr and "Traceback" not in result.stderr


def test_cards_say_what_users_need_and_carry_no_local_paths(trained, tmp_path):
    from denoising_diffusion.publishing import render_model_card

    folder = tmp_path / "student"
    shutil.copytree(trained, folder)
    config = yaml.safe_load((folder / "training_config.yaml").read_text())
    config.update(teacher="someone/teacher", distill_steps=[4], train_data_dir=str(tmp_path / "private_images"),
                  hub_license="mit")
    (folder / "training_config.yaml").write_text(yaml.safe_dump(config))
    (folder / "eval.json").write_text(json.dumps({
        "num_samples": 100, "num_real": 500, "features": "digits", "results": [
            {"steps": 4, "kid": 0.0123, "kid_std": 0.002, "fid": 9.0, "seconds": 1.0, "images_per_second": 100.0,
             "recognised": 0.81}],
        "real_vs_real": {"kid": 0.004, "kid_std": 0.001, "fid": 1.0, "recognised": 0.95}}))
    card = render_model_card(folder, "someone/student")
    assert card.data.license == "mit" and card.data.base_model == "someone/teacher"
    text = card.text
    assert text.startswith("\n# student") and "pip install denoising-diffusion" in text
    assert 'images[0].save("sample.png")' in text
    assert "## Intended use and limitations" in text
    assert "best KID 0.0123 at 4 steps, against 0.0040 between two halves of the real images" in text
    assert "81% of the samples are recognised" in text and "95% of real held-out images" in text
    assert str(tmp_path) not in text and "a folder of" in text
    assert "3.6 / 2.0 / 1.8" not in text  # no figures of another model
    ModelCard(str(card))  # the front matter is valid
