import json

import pytest
import torch

from conftest import tiny_pipeline
from denoising_diffusion.training import ConfigError, parse_config, train
from denoising_diffusion.training.objectives import DiffusionObjective
from test_training import TINY


def conditional_pipeline():
    from conftest import tiny_unet

    pipe = tiny_pipeline(unet=tiny_unet(num_class_embeds=4))
    with torch.no_grad():
        pipe.unet.class_embedding.weight.mul_(5)  # make classes matter in an untrained model
    return pipe


def test_class_labels_and_guidance():
    # float64: the guided pass runs the UNet on a batch of 4 (labels and "no class"), the plain one on 2;
    # in float32 the two batch shapes alone round differently by ~1e-5 after 3 steps.
    pipe = conditional_pipeline().to(torch.float64)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    run = lambda **kw: pipe(batch_size=2, generator=g(), num_inference_steps=3, output_type="pt", **kw).images  # noqa: E731
    zero, one = run(class_labels=0), run(class_labels=[1, 1])
    assert not torch.allclose(zero, one)
    torch.testing.assert_close(run(class_labels=[0, 1])[1], one[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run(class_labels=1, guidance_scale=1.0), one)
    # guidance_scale = 0 is the unconditional model; > 1 extrapolates away from it.
    torch.testing.assert_close(run(class_labels=1, guidance_scale=0.0), run(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(run(class_labels=1, guidance_scale=3.0), one)


def test_predict_without_labels_is_unconditional_on_a_conditional_model():
    pipe = conditional_pipeline()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(0.5)
    with torch.no_grad():
        torch.testing.assert_close(pipe.predict(x, t), pipe.unet(x, t, class_labels=torch.tensor([3, 3])).sample)
    latents = pipe.invert(torch.rand(2, 1, 8, 8), 3)  # inversion without labels works too
    assert latents.shape == (2, 1, 8, 8)


def test_guidance_combines_conditional_and_unconditional_predictions():
    pipe = conditional_pipeline()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(0.5)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        cond = pipe.unet(x, t, class_labels=labels).sample
        uncond = pipe.unet(x, t, class_labels=torch.full_like(labels, 3)).sample
        guided = pipe.predict(x, t, labels, guidance_scale=2.5)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_bad_class_labels():
    with pytest.raises(ValueError, match="this model is unconditional"):
        tiny_pipeline()(class_labels=[1])
    pipe = conditional_pipeline()
    with pytest.raises(ValueError, match=r"class_labels must be in \[0, 2\] for this model \(or 3, its \"no class\" "
                                         r"label\), got \[4\]"):
        pipe(class_labels=[4])
    with pytest.raises(ValueError, match="Got 3 class_labels for batch_size=2"):
        pipe(batch_size=2, class_labels=[0, 1, 2])


class LabelSpy(DiffusionObjective):
    """The diffusion objective, recording the class labels the loop hands it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __call__(self, unet, scheduler, x0, generator, class_labels=None):
        self.seen.append(class_labels.clone())
        return super().__call__(unet, scheduler, x0, generator, class_labels)


def test_conditional_training_drops_labels_and_saves_a_conditional_pipeline(tmp_path):
    spy = LabelSpy()
    unet = json.dumps({"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "num_class_embeds": 11})
    out = train(parse_config(TINY + ["--output_dir", str(tmp_path / "cond"), "--unet", unet, "--label_column", "label",
                                     "--max_train_steps", "5", "--cond_drop_prob", "0.5", "--train_batch_size", "40"]),
                objective=spy)
    labels = torch.cat(spy.seen)
    assert (labels == 10).float().mean().item() == pytest.approx(0.5, abs=0.15)  # about half dropped
    assert labels.max() == 10 and labels[labels != 10].max() <= 9
    from denoising_diffusion import CosineDDIMPipeline

    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert pipe.null_class_label == 10
    assert pipe(batch_size=2, class_labels=[3, 7], guidance_scale=2.0, num_inference_steps=2, output_type="pt").images.shape == (2, 1, 8, 8)


def test_label_errors_before_training(tmp_path):
    unet = json.dumps({"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "num_class_embeds": 10})
    with pytest.raises(ConfigError, match="labels from 0 to 9, but unet.num_class_embeds=10 allows 0..8"):
        train(parse_config(TINY + ["--output_dir", str(tmp_path / "a"), "--unet", unet, "--label_column", "label"]))
    with pytest.raises(ConfigError, match="needs label_column"):
        parse_config(TINY + ["--unet", unet])


@pytest.mark.parametrize("loss", ["mse", "mae"])
@pytest.mark.parametrize("loss_on", ["noise", "image", "velocity"])
def test_min_snr_weighting(loss_on, loss):
    from denoising_diffusion import CosineDDIMScheduler

    torch.manual_seed(0)
    pipe = tiny_pipeline()
    scheduler = CosineDDIMScheduler(prediction_type="v_prediction" if loss_on == "velocity" else "epsilon")
    x0 = torch.randn(6, 1, 8, 8)
    config = parse_config(["--loss", loss, "--loss_on", loss_on])
    plain = DiffusionObjective.from_config(config)(pipe.unet, scheduler, x0, torch.Generator().manual_seed(1))
    config.snr_gamma = 5.0
    weighted = DiffusionObjective.from_config(config)(pipe.unet, scheduler, x0, torch.Generator().manual_seed(1))
    # Recompute by hand from the same draws.
    g = torch.Generator().manual_seed(1)
    noise, t = torch.randn(x0.shape, generator=g), torch.rand(6, generator=g)
    signal, sigma = scheduler.signal_noise_rates(t)
    snr = (signal / sigma) ** 2
    # Min-SNR-gamma caps the image-space weight of squared errors at gamma: min(SNR, 5) on x0, which is
    # min(SNR, 5) / SNR on eps and min(SNR, 5) / (SNR + 1) on v. Absolute errors scale with the square
    # roots of those factors (|x0 err| = |eps err| / sqrt(SNR), |v err| = sqrt(SNR + 1) |x0 err|).
    weight = {"noise": snr.clamp(max=5) / snr, "image": snr.clamp(max=5), "velocity": snr.clamp(max=5) / (snr + 1)}[loss_on]
    if loss == "mae":
        weight = weight.sqrt()
    with torch.no_grad():
        noisy = scheduler.add_noise(x0, noise, t)
        x0_hat, eps_hat = scheduler.convert_model_output(pipe.unet(noisy, t).sample, t, noisy)
        s4, n4 = signal.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
        est, tgt = {"noise": (eps_hat, noise), "image": (x0_hat, x0),
                    "velocity": (s4 * eps_hat - n4 * x0_hat, s4 * noise - n4 * x0)}[loss_on]
        per_image = ((est - tgt) ** 2 if loss == "mse" else (est - tgt).abs()).flatten(1).mean(1)
    torch.testing.assert_close(weighted["loss"], (weight * per_image).mean(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(plain["loss"], per_image.mean(), atol=1e-5, rtol=1e-4)


def test_velocity_objective_end_to_end(tmp_path):
    out = train(parse_config(TINY + ["--output_dir", str(tmp_path / "v"), "--loss_on", "velocity",
                                     "--prediction_type", "v_prediction", "--snr_gamma", "5", "--max_train_steps", "3"]))
    from denoising_diffusion import CosineDDIMPipeline

    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert torch.isfinite(pipe(num_inference_steps=3, output_type="pt").images).all()


class LabelRecorder:
    """Records the class labels of every forward pass of a UNet."""

    def __init__(self, unet):
        self.seen = []
        unet.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.seen.append(kwargs["class_labels"].clone())


def test_a_stored_class_prior_draws_the_labels_of_a_call_without_them(tmp_path):
    from denoising_diffusion import CosineDDIMPipeline

    pipe = conditional_pipeline()
    pipe.register_to_config(sampling_defaults={"class_prior": [0.0, 1.0, 0.0]})
    recorder = LabelRecorder(pipe.unet)
    run = lambda seed=3, **kw: pipe(batch_size=64, generator=torch.Generator().manual_seed(seed),  # noqa: E731
                                    num_inference_steps=2, output_type="pt", **kw).images
    only_one = run()
    assert all(bool((labels == 1).all()) for labels in recorder.seen)  # every image drew class 1
    torch.testing.assert_close(only_one, run(class_labels=1), rtol=0, atol=0)  # drawn after the noise: same noise
    recorder.seen.clear()
    run(class_labels=pipe.null_class_label)  # "no class" may be asked for: the model's unconditional samples
    assert all(bool((labels == 3).all()) for labels in recorder.seen)

    pipe.register_to_config(sampling_defaults={"class_prior": [0.5, 0.0, 0.5]})
    recorder.seen.clear()
    first = run()
    drawn = recorder.seen[0]
    assert set(drawn.tolist()) == {0, 2} and 16 < int((drawn == 0).sum()) < 48  # about half each, never class 1
    torch.testing.assert_close(first, run(), rtol=0, atol=0)  # the generator makes the draw reproducible
    same_seed = recorder.seen[-1]
    run(seed=4)
    assert not torch.equal(same_seed, recorder.seen[-1])  # another generator, another draw

    # a per-image list of generators draws each image's label with its own generator
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(4)]  # noqa: E731
    a = pipe(batch_size=4, generator=gens(), num_inference_steps=2, output_type="pt").images
    b = pipe(batch_size=4, generator=gens(), num_inference_steps=2, output_type="pt").images
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    # saved and loaded with the pipeline; a stored guidance weight then applies to drawn labels too
    pipe.register_to_config(sampling_defaults={"class_prior": [0.5, 0.0, 0.5], "guidance_scale": 2.0})
    assert pipe.network_evaluations(3) == 6 and pipe.network_evaluations(3, class_labels=False) == 3
    pipe.save_pretrained(tmp_path / "prior")
    loaded = CosineDDIMPipeline.from_pretrained(tmp_path / "prior")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.class_prior == [0.5, 0.0, 0.5]
    recorder = LabelRecorder(loaded.unet)
    loaded(batch_size=8, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="pt")
    assert recorder.seen[0].shape == (16,) and bool((recorder.seen[0][8:] == 3).all())  # guided: labels + "no class"


def test_a_class_prior_is_checked():
    from conftest import tiny_unet
    from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler

    scheduler = CosineDDIMScheduler()
    assert CosineDDIMPipeline(tiny_unet(num_class_embeds=4), scheduler,
                              sampling_defaults={"class_prior": [1, 1, 2]}).class_prior == [0.25, 0.25, 0.5]
    with pytest.raises(ValueError, match=r"class_prior needs one probability per class of the UNet \(3\), got 2"):
        CosineDDIMPipeline(tiny_unet(num_class_embeds=4), scheduler, sampling_defaults={"class_prior": [0.5, 0.5]})
    with pytest.raises(ValueError, match=r"class_prior needs one probability per class of the UNet \(0\)"):
        CosineDDIMPipeline(tiny_unet(), scheduler, sampling_defaults={"class_prior": [1.0]})
    for bad in ([0, 0, 0], [1, -1, 1], "dataset", [1, float("nan"), 1]):
        with pytest.raises(ValueError, match="class_prior must be one weight >= 0 per class, not all zero"):
            CosineDDIMPipeline(tiny_unet(num_class_embeds=4), scheduler, sampling_defaults={"class_prior": bad})
    with pytest.raises(ValueError, match=r"class_labels must be in \[0, 2\] for this model \(or 3, its \"no class\""):
        conditional_pipeline()(class_labels=4, num_inference_steps=1)
    with pytest.raises(ConfigError, match="sampling.class_prior='dataset' draws class labels, which needs a "
                                          r"class-conditional model \(label_column\)"):
        parse_config(TINY + ["--sampling", '{"class_prior": "dataset"}'])
    with pytest.raises(ConfigError, match="sampling: class_prior must be one weight >= 0 per class"):
        parse_config(TINY + ["--label_column", "label", "--sampling", '{"class_prior": "uniform"}'])


def test_class_prior_dataset_stores_the_training_labels_frequencies(tmp_path):
    from denoising_diffusion import CosineDDIMPipeline

    spy = LabelSpy()  # one epoch of 40 images in 5 batches of 8, no labels dropped: every label seen once
    out = train(parse_config(TINY + ["--output_dir", str(tmp_path / "prior"), "--label_column", "label",
                                     "--max_train_steps", "5", "--cond_drop_prob", "0", "--sampling",
                                     '{"class_prior": "dataset"}']), objective=spy)
    seen = torch.cat(spy.seen)
    assert seen.numel() == 40
    pipe = CosineDDIMPipeline.from_pretrained(out)
    assert pipe.class_prior == pytest.approx((torch.bincount(seen, minlength=10) / 40).tolist())
    assert len(set(pipe.class_prior)) > 1  # the 40 digits are not exactly balanced: the counts are stored
    assert "class_prior: dataset" in (out / "training_config.yaml").read_text()  # the config as given
    from denoising_diffusion.publishing import render_model_card

    card = render_model_card(out).text
    assert "each image's class is drawn from the training images' class frequencies" in card
    assert "`class_labels=10` (the \"no class\" label)" in card


# ---------------------------------------------------------------- class_balance: rare classes drawn more often

def test_class_balanced_sampler_draws_classes_in_proportion_to_n_to_the_one_minus_power():
    from denoising_diffusion.training.data import ClassBalancedSampler

    labels = torch.tensor([0] * 900 + [1] * 100)  # 9:1
    def share_of_rare(power):
        sampler = ClassBalancedSampler(labels, seed=3, power=power)
        drawn = []
        for epoch in range(20):
            sampler.set_epoch(epoch)
            drawn += list(sampler)
        assert len(drawn) == 20 * len(labels)  # an epoch keeps its length
        return (labels[torch.tensor(drawn)] == 1).float().mean().item()

    assert share_of_rare(0.0) == pytest.approx(0.1, abs=0.01)  # the data's frequencies
    assert share_of_rare(1.0) == pytest.approx(0.5, abs=0.01)  # every class equally often
    assert share_of_rare(0.5) == pytest.approx(1 / (1 + 3), abs=0.01)  # sqrt(100) : sqrt(900) = 1 : 3
    # the order is a function of (seed, epoch) alone; random crops get (epoch, index) keys
    a, b = ClassBalancedSampler(labels, 3, 1.0), ClassBalancedSampler(labels, 3, 1.0)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    pairs = ClassBalancedSampler(labels, 3, 1.0, pairs=True)
    pairs.set_epoch(4)
    b.set_epoch(4)
    assert list(pairs) == [(4, i) for i in b]


def _imbalanced_dataset(folder, counts=(36, 4)):
    from datasets import ClassLabel, Dataset, Features, Image
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    images = [PIL.Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L") for _ in labels]
    Dataset.from_dict({"image": images, "label": labels},
                      features=Features({"image": Image(), "label": ClassLabel(names=["common", "rare"])})
                      ).save_to_disk(str(folder))
    return str(folder)


@pytest.mark.parametrize("balance, rare_share", [(0.0, 0.1), (1.0, 0.5)])
def test_trainer_batches_follow_class_balance(tmp_path, balance, rare_share):
    from denoising_diffusion.training import Trainer

    data = _imbalanced_dataset(tmp_path / "data")
    config = parse_config(TINY + ["--output_dir", str(tmp_path / "run"), "--dataset_name", data, "--label_column",
                                  "label", "--max_train_samples", "40", "--class_balance", str(balance)])
    trainer = Trainer(config)
    drawn = []
    for epoch in range(25):
        trainer.dataloader.set_epoch(epoch)
        drawn += [label for batch in trainer.dataloader for label in batch["labels"].tolist()]
    assert len(drawn) == 25 * 40
    assert sum(drawn) / len(drawn) == pytest.approx(rare_share, abs=0.04)


def test_class_balanced_run_resumes_bit_identically(tmp_path):
    from test_training import assert_same_weights, straight_and_resumed, unet_weights

    data = _imbalanced_dataset(tmp_path / "data")
    common = ["--dataset_name", data, "--label_column", "label", "--class_balance", 1.0, "--max_train_steps", 7,
              "--checkpointing_steps", 4]  # 40 images, batch 8: stopped and resumed mid-epoch (step 4 of 5)
    straight, resumed = straight_and_resumed(tmp_path, common, kill_after_step=4)
    assert_same_weights(unet_weights(straight), unet_weights(resumed))


def test_class_balance_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"class_balance=1.5 is not valid; expected a value in \[0, 1\]"):
        parse_config(TINY + ["--label_column", "label", "--class_balance", "1.5"])
    with pytest.raises(ConfigError, match=r"class_balance=1.0 draws examples by class, which needs label_column"):
        parse_config(TINY + ["--class_balance", "1"])
    with pytest.raises(ConfigError, match=r"class_balance=0.5 .*not streamed"):
        parse_config(TINY + ["--label_column", "label", "--class_balance", "0.5", "--streaming",
                             "--max_train_steps", "2"])


def test_class_balance_on_a_folder_without_classes_is_ignored_with_a_warning(tmp_path, caplog):
    import numpy as np
    import PIL.Image

    images = tmp_path / "holiday"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        PIL.Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(images / f"{i}.png")
    with caplog.at_level("WARNING"):
        out = train(parse_config(TINY + ["--train_data_dir", str(images), "--channels", "3", "--label_column", "auto",
                                         "--class_balance", "1", "--max_train_steps", "2",
                                         "--output_dir", str(tmp_path / "run")]))
    assert "class_balance=1.0 is ignored: the images have no classes." in caplog.text
    assert json.loads((out / "training_summary.json").read_text())["global_step"] == 2


def test_class_rows_draws_one_labelled_row_per_class_from_the_same_noise(tmp_path):
    import subprocess
    import sys

    import PIL.Image
    from conftest import tiny_unet
    from denoising_diffusion import CosineDDIMPipeline, CosineDDIMScheduler
    from test_training import ROOT

    unet = tiny_unet(num_class_embeds=4)
    with torch.no_grad():
        unet.class_embedding.weight.mul_(5)
    defaults = {"num_inference_steps": 3, "with_class_labels": {"guidance_scale": 2.0}}
    CosineDDIMPipeline(unet, CosineDDIMScheduler(), class_names=["cat", "dog", "owl"],
                       sampling_defaults=defaults).save_pretrained(tmp_path / "pipe")
    rows = lambda *args: subprocess.run([sys.executable, str(ROOT / "benchmarks/class_rows.py"), "--model",  # noqa: E731
                                         str(tmp_path / "pipe"), "--out", str(tmp_path / "rows.png"), "--per_row", "4",
                                         *args], capture_output=True, text=True, check=True).stdout
    assert "3 rows of 4: 3 steps, 6 network evaluations per image" in rows()  # the stored defaults, each step guided
    out = rows("--steps", "2", "--guidance_scale", "1.0")
    assert "3 rows of 4: 2 steps, 2 network evaluations per image" in out  # arguments win
    width, height = PIL.Image.open(tmp_path / "rows.png").size
    assert height % 3 == 0 and width == 170 + 4 * (height // 3)  # 3 rows of 4 square tiles after the labels
