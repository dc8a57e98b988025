"""Patch Diffusion (Wang et al. 2023): position channels in the UNet and training on random crops."""

import pytest
import torch

from conftest import tiny_unet
from denoising_diffusion import CosineDDIMPipeline
from denoising_diffusion.models.unet_continuous import pixel_positions
from denoising_diffusion.training import ConfigError, parse_config, train
from denoising_diffusion.training.callbacks import Callback
from denoising_diffusion.training.objectives import RandomCrops
from test_training import TINY, KillAfterCheckpoint, assert_same_weights, unet_weights


def test_pixel_positions_span_the_whole_image_column_then_row():
    grid = pixel_positions(8, 8, 8)
    assert grid.shape == (2, 8, 8)
    torch.testing.assert_close(grid[:, 0, 0], torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(grid[:, 7, 7], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(grid[:, 2, 5], torch.tensor([2 * 5 / 7 - 1, 2 * 2 / 7 - 1]))  # (column, row)
    assert torch.equal(grid[0], grid[0, :1].expand(8, 8)) and torch.equal(grid[1], grid[1, :, :1].expand(8, 8))
    # A larger sample than the nominal size reaches beyond 1; a model without a nominal size spans its sample.
    assert pixel_positions(8, 4, 16)[0, 0, -1].item() == pytest.approx(2 * 15 / 7 - 1)
    torch.testing.assert_close(pixel_positions(None, 4, 4)[:, 3, 3], torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("patch_size", [1, 2])
def test_a_unet_with_position_channels_reads_where_its_pixels_lie(patch_size):
    unet = tiny_unet(position_channels=True, patch_size=patch_size).eval()
    assert unet.conv_in.in_channels == (1 + 2) * patch_size**2  # the image's channel, then column and row
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = unet.position_grid(8, 8).expand(3, 2, 8, 8)
    with torch.no_grad():
        out = unet(x, 0.5).sample
        assert out.shape == (3, 1, 8, 8) and torch.count_nonzero(out) > 0
        assert torch.equal(out, unet(x, 0.5, positions=whole).sample)  # None: the whole image's grid
        shifted = unet(x, 0.5, positions=whole + 0.5).sample
        assert not torch.allclose(out, shifted)
    with pytest.raises(ValueError, match=r"positions must have shape \(3, 2, 8, 8\).*got \(3, 2, 4, 4\)"):
        unet(x, 0.5, positions=whole[..., :4, :4])
    with pytest.raises(ValueError, match="positions was given, but this model has no position_channels"):
        tiny_unet()(x, 0.5, positions=whole)


def test_random_crops_are_slices_of_the_images_and_of_their_positions():
    crops = RandomCrops(0.5, 4, 8)
    x0 = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    grid = pixel_positions(8, 8, 8)
    generator, cropped, corners = torch.Generator().manual_seed(0), 0, set()
    for _ in range(200):
        images, positions = crops(x0, generator)
        if positions is None:
            assert images is x0
            continue
        cropped += 1
        assert images.shape == (6, 3, 4, 4) and positions.shape == (6, 2, 4, 4)
        for b in range(6):  # the top-left pixel's position names the crop's corner
            col, row = [round((v + 1) * 7 / 2) for v in positions[b, :, 0, 0].tolist()]
            corners.add((row, col))
            assert torch.equal(images[b], x0[b, :, row:row + 4, col:col + 4])
            assert torch.equal(positions[b], grid[:, row:row + 4, col:col + 4])
    assert 70 <= cropped <= 130  # half of the batches, drawn per batch
    assert len(corners) == 25  # every corner from (0, 0) to (4, 4) comes up
    first = [crops(x0, torch.Generator().manual_seed(5)) for _ in range(2)]  # the generator decides everything
    assert all(torch.equal(a, b) for a, b in zip(first[0], first[1]) if a is not None)
    for fraction, size, message in ((1.0, 4, r"fraction=1.0 is not valid"), (-0.1, 4, r"fraction=-0.1"),
                                    (0.5, 8, r"size=8 is not valid; expected a crop side in \[1, 8\)")):
        with pytest.raises(ValueError, match=message):
            RandomCrops(fraction, size, 8)


class RecordInputSizes(Callback):
    """Records the height of every batch the network trains on."""

    def __init__(self):
        self.sizes = []

    def on_train_begin(self, trainer, step):
        trainer.unet.register_forward_pre_hook(lambda module, args: self.sizes.append(args[0].shape[-1]))


def test_patch_training_saves_a_model_that_samples_whole_images_and_resumes_exactly(tmp_path):
    common = ["--max_train_steps", 6, "--checkpointing_steps", 3, "--patch_fraction", 0.5]
    config = lambda name, *extra: parse_config(TINY + ["--output_dir", str(tmp_path / name), *map(str, common + list(extra))])  # noqa: E731
    sizes = RecordInputSizes()
    straight = train(config("straight"), callbacks=[sizes])
    assert set(sizes.sizes) == {4, 8}  # crops of resolution // 2 and whole images
    pipe = CosineDDIMPipeline.from_pretrained(straight)
    assert pipe.unet.config.position_channels and pipe.unet.conv_in.in_channels == 3
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=2, num_inference_steps=2, output_type="pt").images.shape == (2, 1, 8, 8)
    assert "with 2 position channels, 0.5 of the batches on crops (Patch Diffusion)" in (straight / "README.md").read_text()
    with pytest.raises(KeyboardInterrupt):
        train(config("resumed"), callbacks=[KillAfterCheckpoint(3)])
    resumed = train(config("resumed", "--resume_from_checkpoint", "latest"))
    assert_same_weights(unet_weights(straight), unet_weights(resumed))
    # A checkpoint of a model without position channels is refused, naming the difference.
    plain = lambda *extra: parse_config(TINY + ["--output_dir", str(tmp_path / "plain"), "--max_train_steps", "2",  # noqa: E731
                                                *extra])
    with pytest.raises(KeyboardInterrupt):
        train(plain("--checkpointing_steps", "1"), callbacks=[KillAfterCheckpoint(1)])
    with pytest.raises(ConfigError, match="position_channels=False there, True in this config"):
        train(plain("--patch_fraction", "0.5", "--resume_from_checkpoint", "latest"))
    with pytest.raises(ConfigError, match="progressive distillation trains on whole images"):
        train(parse_config(TINY + ["--output_dir", str(tmp_path / "student"), "--teacher", str(straight),
                                   "--distill_steps", "2", "--max_train_steps", "1", "--patch_fraction", "0.5"]))


def test_bad_patch_settings_raise_clear_errors(tmp_path):
    config = lambda *extra: parse_config(TINY + ["--output_dir", str(tmp_path / "run"), "--max_train_steps", "1", *extra])  # noqa: E731
    with pytest.raises(ConfigError, match=r"patch_fraction=1.0 is not valid; expected a value in \[0, 1\)"):
        config("--patch_fraction", "1.0")
    with pytest.raises(ConfigError, match=r"patch_crop_size=8 is not valid; expected a crop side in \[1, resolution=8\)"):
        train(config("--patch_fraction", "0.5", "--patch_crop_size", "8"))
    with pytest.raises(ConfigError, match="patch_crop_size=3 is not divisible by 2, the UNet's downsampling factor"):
        train(config("--patch_fraction", "0.5", "--patch_crop_size", "3"))
    unet = '{"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "position_channels": false}'
    with pytest.raises(ConfigError, match="remove position_channels: false from the unet section"):
        train(config("--patch_fraction", "0.5", "--unet", unet))

