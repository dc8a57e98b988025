"""Images and labels from what a dataset holds: opening (with errors that name the image), the
checks that run before training, and the conversion to uint8 tensors of the training size."""

import io

import numpy as np
import PIL.Image
import torch

from .config import ConfigError, TrainingConfig

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def open_image(value, where: str) -> PIL.Image.Image:
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


def check_colour_fits(mode: str, channels: int, where: str) -> None:
    """A colour image (PIL `mode`) in a 1-channel run would silently turn gray: refuse it."""
    if channels == 1 and mode not in GRAY_MODES:
        raise ConfigError(f"channels=1 but the image {where} is {mode} (3 channels): training would turn the "
                          "colour images gray; set channels: 3.")


def _image_mode(value) -> str:
    """The PIL mode of an undecoded image (reads its header only)."""
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        with PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]) as image:
            return image.mode
    if isinstance(value, PIL.Image.Image):
        return value.mode
    return "L" if np.asarray(value).squeeze().ndim == 2 else "RGB"


def check_images(raw, config: TrainingConfig, decode: bool) -> None:
    """Before training: every image opens (and, with `decode`, decodes), and its channels fit
    `channels`: a colour image in a 1-channel run is refused, and so is a 3-channel run of gray images
    alone; gray images among colour ones become RGB."""
    colour, first_mode = None, None
    for index, example in enumerate(raw.select_columns([config.image_column])):
        value, where = example[config.image_column], f"at index {index}"
        try:
            mode = open_image(value, where).mode if decode else _image_mode(value)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - any unreadable header is reported the same way
            path = value.get("path") if isinstance(value, dict) else None
            raise ConfigError(f"Cannot read the image {where}{f' ({path})' if path else ''}: {error}") from error
        first_mode = first_mode or mode
        check_colour_fits(mode, config.channels, where)
        if mode not in GRAY_MODES:
            colour = colour if colour is not None else index
    if config.channels == 3 and colour is None:
        raise ConfigError(f"channels=3 but the image at index 0 is {first_mode} (1 channel); set channels: 1 "
                          "(every image is grayscale).")


def to_label(value, where: str) -> int:
    """A class label as an integer; anything else (text, missing, NaN, fractions) is refused by name."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        integral = False
    elif isinstance(value, (int, np.integer)):
        return int(value)
    else:
        try:
            integral = float(value).is_integer()
        except (TypeError, ValueError):
            integral = False
    if not integral:
        raise ConfigError(f"The label {where} is {value!r}; class labels must be integers 0..N-1 (a ClassLabel "
                          "column, or integer values).")
    return int(float(value))


def check_labels_are_integers(raw, label_column: str) -> None:
    """Every label of a map-style dataset, read without its images, is an integer."""
    for index, value in enumerate(raw.with_format(None)[label_column]):
        to_label(value, f"at index {index} of label_column={label_column!r}")


def _flatten_alpha(image: PIL.Image.Image) -> PIL.Image.Image:
    """Transparent pixels composited on white (their hidden colour would otherwise show)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image


def image_to_tensor(image: PIL.Image.Image, config: TrainingConfig, rng: np.random.Generator | None) -> torch.Tensor:
    """Resize the shorter side to `resolution`, crop a square (center, or random with `rng` unless
    `center_crop`), to uint8 (C, H, W). Transparent pixels are composited on white first."""
    image = _flatten_alpha(image).convert("L" if config.channels == 1 else "RGB")
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
