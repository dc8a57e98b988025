"""Training data through Hugging Face `datasets`: loading, checking and decoding images once.

Every source (the built-in digits, a Hub id, a local dataset folder or files, an image folder)
becomes a dataset of examples with `pixel_values` (uint8 tensors shaped (C, resolution, resolution)),
plus `labels` when a label column is used. Scaling to floats, normalisation and flips happen on the
training device, batch by batch.

Random crops are a pure function of (seed, epoch, image) for map-style data and of (seed, position
in the shuffled stream) when streaming: the same whichever DataLoader worker or process decodes
them, and the same again after a resume, with nothing to checkpoint.
"""

import itertools
import os
from pathlib import Path

import numpy as np
import torch
import yaml

from ..digits import BUILTIN_DATASET, digits_dataset
from .config import ConfigError, TrainingConfig
from .decoding import (GRAY_MODES, check_colour_fits, check_images, check_labels_are_integers, image_to_tensor,
                       open_image, to_label)

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
    if config.label_column == "auto":  # an image folder's class subfolders, if it has them
        feature = (dataset.features or {}).get("label")
        config.label_column = "label" if type(feature).__name__ == "ClassLabel" and feature.num_classes > 1 else None
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


def _undecoded(dataset, column):
    """The dataset with `column` left as bytes/paths, so that decoding errors can name the image."""
    from datasets import Image

    features = dataset.features
    if features is not None and isinstance(features.get(column), Image):
        return dataset.cast_column(column, Image(decode=False))
    return dataset


class ImageDecoder:
    """Decodes a batch of undecoded images into `pixel_values` (uint8 (C, R, R)) and `labels`.

    A module-level class (not a closure), so DataLoader workers started with spawn (the default on
    macOS and Windows) can pickle it, and `datasets` can fingerprint it for its cache.
    """

    def __init__(self, config: TrainingConfig):
        self.config = config

    def __call__(self, batch: dict, indices: list[int], crop_seeds: list | None = None) -> dict:
        """`crop_seeds` (one per image) seed its random crops (center crops without)."""
        config = self.config
        out = {"pixel_values": []}
        for i, (value, index) in enumerate(zip(batch[config.image_column], indices)):
            image = open_image(value, f"at index {index}")
            check_colour_fits(image.mode, config.channels, f"at index {index}")
            rng = None if crop_seeds is None else np.random.default_rng(crop_seeds[i])
            out["pixel_values"].append(image_to_tensor(image, config, rng))
        if config.label_column:
            out["labels"] = [to_label(v, f"at index {index} of label_column={config.label_column!r}")
                             for v, index in zip(batch[config.label_column], indices)]
        return out


class ArrayDecoder(ImageDecoder):
    """`ImageDecoder` whose `pixel_values` are numpy arrays, for `datasets.Dataset.map` into an `Array3D`
    column: a fixed-shape column is read back a batch at a time without a Python-level conversion
    per pixel (about 9x the images/s of nested lists, and uint8 rather than int64)."""

    def __call__(self, batch: dict, indices: list[int], crop_seeds: list | None = None) -> dict:
        out = super().__call__(batch, indices, crop_seeds)
        out["pixel_values"] = [pixels.numpy() for pixels in out["pixel_values"]]
        return out


class StreamDecoder:
    """`ImageDecoder` for a stream: the random crop of the image at `position` in a pass over the
    (reshuffled) stream is seeded by (seed, position)."""

    def __init__(self, decoder: ImageDecoder, seed: int):
        self.decoder, self.seed = decoder, seed

    def __call__(self, batch: dict, positions: list[int]) -> dict:
        return self.decoder(batch, positions, crop_seeds=[(self.seed, p) for p in positions])


class RandomCropDataset(torch.utils.data.Dataset):
    """Map-style data decoded on access with a random crop drawn from (seed, epoch, index) alone.

    Indexed by `(epoch, index)` pairs, which `EpochSampler` yields in a shuffled order per epoch
    (a plain integer index means epoch 0).
    """

    def __init__(self, raw, decode: ImageDecoder, seed: int):
        self.raw, self.decode, self.seed = raw, decode, seed

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < len(self.raw):
            raise IndexError(index)
        example = self.raw[int(index)]
        batch = {name: [value] for name, value in example.items()}
        out = self.decode(batch, [int(index)], crop_seeds=[(self.seed, int(epoch), int(index))])
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


class ClassBalancedSampler(torch.utils.data.Sampler):
    """As many indices per epoch as there are examples, drawn with replacement so that a class with
    n_c examples comes up in proportion to n_c ** (1 - power): `power` 0 keeps the data's class
    frequencies, 0.5 draws classes in proportion to the square root of their size, 1 draws every class
    equally often. The order depends on (seed, epoch) alone (`set_epoch`), so every process draws the
    same one and a resumed run draws what an uninterrupted one did. With `pairs`, yields the
    `(epoch, index)` keys of a `RandomCropDataset`.
    """

    def __init__(self, labels: torch.Tensor, seed: int, power: float, pairs: bool = False):
        labels = torch.as_tensor(labels, dtype=torch.long)
        counts = torch.bincount(labels).to(torch.float64)
        self.weights = counts[labels].pow(-power)  # per example: its class's share becomes n_c ** (1 - power)
        self.size, self.seed, self.pairs, self.epoch = len(labels), seed, pairs, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        return ((self.epoch, int(i)) for i in order) if self.pairs else (int(i) for i in order)


class TrainingImages:
    """The training images of any source behind one interface: what `prepare_dataset` returns.

    Examples are dicts with `pixel_values` (uint8 tensors (C, resolution, resolution)) and, with a
    `label_column`, `labels`. `dataset` is what a DataLoader reads (a decoded `datasets.Dataset`, a
    `RandomCropDataset` or a streamed `IterableDataset`); use `dataloader()` to read it with the
    right sampler.
    """

    def __init__(self, dataset, streaming: bool, label_column: str | None, labels_source=None,
                 class_names: list[str] | None = None):
        self.dataset, self.streaming, self.label_column = dataset, streaming, label_column
        self._labels_source = labels_source  # undecoded data holding the label column (random crops)
        self.class_names = class_names  # the label column's ClassLabel names, if it has them
        self._labels = None  # read once by `labels()`

    @property
    def num_examples(self) -> int | None:
        """How many examples there are (None for a stream: its length is not known)."""
        return None if self.streaming else len(self.dataset)

    def dataloader(self, batch_size: int, seed: int, num_workers: int = 0, pin_memory: bool = False,
                   class_balance: float = 0.0) -> torch.utils.data.DataLoader:
        """Batches in an order that depends on (seed, epoch) only (random crops come with their own
        sampler; a stream is shuffled by `datasets`). `class_balance` > 0 draws examples with
        replacement, rare classes more often (`ClassBalancedSampler`); it needs labels and no stream."""
        crops = isinstance(self.dataset, RandomCropDataset)
        sampler = self.dataset.sampler(seed) if crops else None
        if class_balance:
            if self.streaming or self.label_column is None:
                raise ConfigError(f"class_balance={class_balance} draws examples by class, which needs a label_column "
                                  "and a dataset that is not streamed.")
            sampler = ClassBalancedSampler(self.labels(), seed, class_balance, pairs=crops)
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size, shuffle=not self.streaming and sampler is None, sampler=sampler,
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        )

    def examples(self, count: int):
        """The first `count` examples (decoded), `pixel_values` as uint8 tensors."""
        for example in itertools.islice(iter(self.dataset), count):
            yield {**example, "pixel_values": torch.as_tensor(example["pixel_values"])}

    def pixels(self, count: int) -> torch.Tensor:
        """The first `count` images (fewer if there are fewer), uint8 (N, C, R, R)."""
        if not self.streaming and not isinstance(self.dataset, RandomCropDataset):
            return torch.as_tensor(self.dataset.select(range(min(count, len(self.dataset))))[:]["pixel_values"])
        return torch.stack([example["pixel_values"] for example in self.examples(count)])

    def labels(self) -> torch.Tensor:
        """Every class label, read once without decoding images (a stream: the first example's only)."""
        if self.label_column is None:
            raise ValueError("These training images have no label_column.")
        if self.streaming:
            return torch.as_tensor([next(iter(self.dataset))["labels"]])
        if self._labels is None:
            source, column = ((self._labels_source, self.label_column) if self._labels_source is not None
                              else (self.dataset, "labels"))
            self._labels = torch.as_tensor(source.with_format(None)[column])
        return self._labels


def check_labels(labels: torch.Tensor, label_column: str, null_class_label: int) -> None:
    """Class labels must be integers below the UNet's "no class" embedding (its last one)."""
    if labels.is_floating_point() or labels.min() < 0 or labels.max() >= null_class_label:
        raise ConfigError(
            f"label_column={label_column!r} holds labels from {labels.min().item()} to {labels.max().item()}, "
            f"but unet.num_class_embeds={null_class_label + 1} allows 0..{null_class_label - 1} (the last embedding "
            "means 'no class'); set num_class_embeds to the number of classes + 1."
        )


def prepare_dataset(config: TrainingConfig) -> TrainingImages:
    """Load, check and turn the dataset into `pixel_values` (uint8, (C, R, R)) and optional `labels`.

    Non-streaming datasets with center crops are decoded once (`map` into a uint8 `Array3D` column,
    read in numpy format and collated to tensors by the DataLoader); with random
    crops they become a `RandomCropDataset` (decoded on access, sampled by its `sampler`); streamed
    ones are decoded as they stream, into the same uint8 column.
    """
    import datasets

    raw = _undecoded(load_raw_dataset(config), config.image_column)
    if config.streaming:  # checked as they stream, and the first one now
        first = open_image(next(iter(raw))[config.image_column], "at index 0")
        check_colour_fits(first.mode, config.channels, "at index 0")
        if config.channels == 3 and first.mode in GRAY_MODES:
            raise ConfigError(f"channels=3 but the image at index 0 is {first.mode} (1 channel); set channels: 1.")
    else:  # random crops decode on access: decode every image now, so none fails mid-training
        check_images(raw, config, decode=not config.center_crop)
        if config.label_column:
            check_labels_are_integers(raw, config.label_column)
    keep = [c for c in (config.image_column, config.label_column) if c]
    feature = (raw.features or {}).get(config.label_column) if config.label_column else None
    names = list(feature.names) if type(feature).__name__ == "ClassLabel" else None
    shape = (config.channels, config.resolution, config.resolution)
    features = datasets.Features({"pixel_values": datasets.Array3D(shape, "uint8"),
                                  **({"labels": datasets.Value("int64")} if config.label_column else {})})
    if config.streaming:  # decoded as they stream into the same fixed-shape uint8 column
        raw = raw.select_columns(keep).shuffle(seed=config.seed, buffer_size=1000)
        # `with_indices` counts from 0 in each pass over the (reshuffled) stream.
        dataset = raw.map(StreamDecoder(ArrayDecoder(config), config.seed), batched=True, with_indices=True,
                          remove_columns=keep, features=features)
        # unformatted: the decoder's own uint8 arrays (a "numpy" or "torch" format would widen them to int64)
        return TrainingImages(dataset, True, config.label_column, class_names=names)
    if config.center_crop:  # decoded once into a fixed-shape uint8 column, read as numpy (collated to tensors)
        dataset = raw.map(ArrayDecoder(config), batched=True, with_indices=True, remove_columns=raw.column_names,
                          features=features, desc="Decoding images")
        dataset = dataset.with_format("numpy", columns=["pixel_values"], dtype=np.uint8, output_all_columns=True)
        return TrainingImages(dataset, False, config.label_column, class_names=names)
    raw = raw.select_columns(keep)
    return TrainingImages(RandomCropDataset(raw, ImageDecoder(config), config.seed), False, config.label_column, labels_source=raw,
                          class_names=names)


def pixel_statistics(images: TrainingImages, config: TrainingConfig) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the images in [0, 1] (the normalisation of the Keras DDIM
    example), from up to `normalization_samples` images."""
    total = torch.zeros(config.channels, dtype=torch.float64)
    total_sq = torch.zeros(config.channels, dtype=torch.float64)
    count = 0
    for example in images.examples(config.normalization_samples):
        pixels = example["pixel_values"].to(torch.float64).div(255.0).flatten(1)
        total += pixels.sum(1)
        total_sq += (pixels**2).sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (total_sq / count - mean**2).clamp(min=1e-12).sqrt()
    return mean.tolist(), std.tolist()


def data_config(folder: Path, pipe, dataset: str | None = None, image_column: str | None = None,
                train_data_dir: str | None = None) -> TrainingConfig:
    """The data half of the model's training config (or of the built-in digits), with overrides:
    the images the model was trained on, at its resolution and channels, center-cropped."""
    saved = folder / "training_config.yaml"
    values = yaml.safe_load(saved.read_text()) if saved.exists() else {}
    keep = {"dataset_name", "dataset_config_name", "dataset_split", "train_data_dir", "image_column"}
    values = {k: v for k, v in values.items() if k in keep}
    size = pipe.unet.config.sample_size
    values.update(resolution=size if isinstance(size, int) else size[0], channels=pipe.unet.config.in_channels,
                  center_crop=True, label_column=None, streaming=False)
    if dataset is not None:
        values.update(dataset_name=dataset, train_data_dir=None)
    if train_data_dir is not None:
        values["train_data_dir"] = train_data_dir
    if image_column is not None:
        values["image_column"] = image_column
    return TrainingConfig(**values)


def real_images(config: TrainingConfig, limit: int) -> torch.Tensor:
    """Up to `limit` of the dataset's images, float32 (N, C, H, W) in [0, 1]."""
    return prepare_dataset(config).pixels(limit).float().div(255.0)


def number_of_classes(config: TrainingConfig, images: "TrainingImages") -> int:
    """How many classes `label_column` has: its names (ClassLabel or `class_names`), else the largest label + 1."""
    names = config.class_names or images.class_names
    if names:
        return len(names)
    if images.streaming:
        raise ConfigError(f"label_column={config.label_column!r} of a stream has no ClassLabel names, so its "
                          "number of classes is not known before training: set class_names, or "
                          "unet.num_class_embeds (the number of classes + 1).")
    return int(images.labels().max()) + 1


def class_names(config: TrainingConfig, images: "TrainingImages", num_classes: int) -> list[str] | None:
    """The names of the classes 0..num_classes-1 (`class_names`, else the ClassLabel's), or None."""
    names = config.class_names or images.class_names
    if names is not None and len(names) != num_classes:
        raise ConfigError(f"class_names has {len(names)} names ({names}), but the UNet has {num_classes} "
                          "classes (unet.num_class_embeds - 1); give one name per class.")
    return [str(name) for name in names] if names is not None else None
