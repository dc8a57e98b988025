"""Training data through Hugging Face `datasets`: loading, checking and decoding images once.

Every source (the built-in digits, a Hub id, a local dataset folder or files, an image folder)
becomes a dataset of examples with `pixel_values` (uint8 tensors shaped (C, resolution, resolution)),
plus `labels` when a label column is used. Scaling to floats, normalisation and flips happen on the
training device, batch by batch.

Random crops are a pure function of (seed, epoch, image) for map-style data and of (seed, position
in the shuffled stream) when streaming: the same whichever DataLoader worker or process decodes
them, and the same again after a resume, with nothing to checkpoint.
"""

import io
import itertools
import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .config import BUILTIN_DATASET, ConfigError, TrainingConfig

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def digits_dataset():
    """scikit-learn's 1,797 handwritten digits (8x8, ships inside scikit-learn) as a `datasets.Dataset`.

    Columns: `image` (grayscale PIL images, pixel values 0..16 scaled to 0..255) and `label` (0-9).
    """
    from datasets import ClassLabel, Dataset, Features, Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [PIL.Image.fromarray(np.round(img * (255.0 / 16.0)).astype(np.uint8), mode="L") for img in digits.images]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    return Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)


def load_raw_dataset(config: TrainingConfig):
    """The dataset as its source gives it (images not yet decoded), checked for columns and size."""
    import datasets

    name = config.dataset_name
    source = config.train_data_dir or name
    if config.train_data_dir and not Path(config.train_data_dir).is_dir():
        raise ConfigError(f"train_data_dir {config.train_data_dir!r} is not a folder.")
    if not source:
        raise ConfigError("Set dataset_name (a Hub id, a local dataset, or 'digits') or train_data_dir.")
    try:
        if config.train_data_dir:
            dataset = datasets.load_dataset("imagefolder", data_dir=config.train_data_dir, split=config.dataset_split,
                                            streaming=config.streaming)
        elif name == BUILTIN_DATASET:
            dataset = digits_dataset()
        elif os.path.isdir(name) and any((Path(name) / f).exists() for f in ("dataset_dict.json", "state.json")):
            dataset = datasets.load_from_disk(name)  # written by `save_to_disk`
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[config.dataset_split]
        else:
            dataset = datasets.load_dataset(name, config.dataset_config_name, split=config.dataset_split,
                                            streaming=config.streaming)
        if config.streaming and isinstance(dataset, datasets.Dataset):
            dataset = dataset.to_iterable_dataset()  # in memory or on disk already: stream it all the same
    except ValueError as error:
        if "corresponds to no data" in str(error):
            raise ConfigError(f"The dataset {source!r} (split {config.dataset_split!r}) is empty.") from error
        raise ConfigError(f"Could not load the dataset {source!r}: {error}") from error
    except (FileNotFoundError, ConnectionError, OSError) as error:
        raise ConfigError(f"Could not load the dataset {source!r}: {error}") from error

    columns = list(dataset.column_names or [])
    if not config.streaming and len(dataset) == 0:
        raise ConfigError(f"The dataset {source!r} (split {config.dataset_split!r}) is empty.")
    for role, column in (("image_column", config.image_column), ("label_column", config.label_column)):
        if column is not None and columns and column not in columns:
            raise ConfigError(f"{role}={column!r} is not a column of the dataset; its columns are {columns}.")
    if config.max_train_samples is not None:
        dataset = dataset.take(config.max_train_samples) if config.streaming else dataset.select(
            range(min(config.max_train_samples, len(dataset)))
        )
    return dataset


def _open_image(value, where: str) -> PIL.Image.Image:
    """A PIL image from what an undecoded `Image` column (or an array column) holds."""
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
            image = PIL.Image.open(source)
        else:
            array = np.asarray(value)
            if array.dtype != np.uint8:
                array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            image = PIL.Image.fromarray(array.squeeze())
        image.load()
        return image
    except Exception as error:  # noqa: BLE001 - any decoding failure is reported the same way
        path = value.get("path") if isinstance(value, dict) else None
        raise ConfigError(f"Cannot read the image {where}{f' ({path})' if path else ''}: {error}") from error


def _check_channels(image: PIL.Image.Image, channels: int, where: str) -> None:
    found = 1 if image.mode in GRAY_MODES else 3
    if found != channels:
        raise ConfigError(
            f"channels={channels} but the image {where} is {image.mode} ({found} channel{'s' * (found > 1)}); "
            f"set channels: {found}."
        )


def image_to_tensor(image: PIL.Image.Image, config: TrainingConfig, rng: np.random.Generator | None) -> torch.Tensor:
    """Resize the shorter side to `resolution`, crop a square (center, or random with `rng` unless
    `center_crop`), to uint8 (C, H, W)."""
    image = image.convert("L" if config.channels == 1 else "RGB")
    size = config.resolution
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), PIL.Image.Resampling.BICUBIC if scale > 1 else PIL.Image.Resampling.LANCZOS)
    if rng is None or config.center_crop:
        left, top = (new_w - size) // 2, (new_h - size) // 2
    else:
        left, top = int(rng.integers(0, new_w - size + 1)), int(rng.integers(0, new_h - size + 1))
    image = image.crop((left, top, left + size, top + size))
    array = np.array(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def _undecoded(dataset, column):
    """The dataset with `column` left as bytes/paths, so that decoding errors can name the image."""
    from datasets import Image

    features = dataset.features
    if features is not None and isinstance(features.get(column), Image):
        return dataset.cast_column(column, Image(decode=False))
    return dataset


def prepare_dataset(config: TrainingConfig):
    """Load, check and turn the dataset into `pixel_values` (uint8, (C, R, R)) and optional `labels`.

    Non-streaming datasets with center crops are decoded once (`map` + torch format); with random
    crops they become a `RandomCropDataset` (decoded on access, sampled by its `sampler`); streamed
    ones are decoded as they stream.
    """
    raw = _undecoded(load_raw_dataset(config), config.image_column)
    first = next(iter(raw))
    _check_channels(_open_image(first[config.image_column], "at index 0"), config.channels, "at index 0")
    keep = [c for c in (config.image_column, config.label_column) if c]

    def convert(batch, indices, crop_seeds=None):
        """Decode a batch; `crop_seeds` (one per image) seed its random crops (center crops without)."""
        out = {"pixel_values": []}
        for i, (value, index) in enumerate(zip(batch[config.image_column], indices)):
            image = _open_image(value, f"at index {index}")
            rng = None if crop_seeds is None else np.random.default_rng(crop_seeds[i])
            out["pixel_values"].append(image_to_tensor(image, config, rng))
        if config.label_column:
            out["labels"] = [int(v) for v in batch[config.label_column]]
        return out

    if config.streaming:
        raw = raw.select_columns(keep).shuffle(seed=config.seed, buffer_size=1000)

        def convert_stream(batch, positions):
            # `positions` count from 0 in each pass over the (reshuffled) stream.
            return convert(batch, positions, crop_seeds=[(config.seed, p) for p in positions])

        dataset = raw.map(convert_stream, batched=True, with_indices=True, remove_columns=keep)
        return dataset.with_format("torch")
    if config.center_crop:
        dataset = raw.map(convert, batched=True, with_indices=True, remove_columns=raw.column_names,
                          desc="Decoding images")
        return dataset.with_format("torch")
    return RandomCropDataset(raw.select_columns(keep), convert, config.seed)


class RandomCropDataset(torch.utils.data.Dataset):
    """Map-style data decoded on access with a random crop drawn from (seed, epoch, index) alone.

    Indexed by `(epoch, index)` pairs, which `EpochSampler` yields in a shuffled order per epoch
    (a plain integer index means epoch 0).
    """

    def __init__(self, raw, convert, seed: int):
        self.raw, self.convert, self.seed = raw, convert, seed

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < len(self.raw):
            raise IndexError(index)
        example = self.raw[int(index)]
        batch = {name: [value] for name, value in example.items()}
        out = self.convert(batch, [int(index)], crop_seeds=[(self.seed, int(epoch), int(index))])
        return {name: values[0] for name, values in out.items()}

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def sampler(self, seed: int) -> "EpochSampler":
        return EpochSampler(len(self), seed)


class EpochSampler(torch.utils.data.Sampler):
    """`(epoch, index)` for every index, in an order shuffled by (seed, epoch) alone (`set_epoch`)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return ((self.epoch, int(i)) for i in order)


def first_examples(dataset, count: int):
    """The first `count` examples of any dataset `prepare_dataset` returns (streamed ones too)."""
    return itertools.islice(iter(dataset), count)


def pixel_statistics(dataset, config: TrainingConfig) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the images in [0, 1] (the seeds' normalisation), from up to
    `normalization_samples` images."""
    total = torch.zeros(config.channels, dtype=torch.float64)
    total_sq = torch.zeros(config.channels, dtype=torch.float64)
    count = 0
    for example in first_examples(dataset, config.normalization_samples):
        pixels = example["pixel_values"].to(torch.float64).div(255.0).flatten(1)
        total += pixels.sum(1)
        total_sq += (pixels**2).sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (total_sq / count - mean**2).clamp(min=1e-12).sqrt()
    return mean.tolist(), std.tolist()
