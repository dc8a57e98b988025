"""Feature extractors for KID/FID: Inception-v3 (the standard) and an offline digits classifier.

Both map images `(N, C, H, W)` in [0, 1] to features `(N, D)`, the form torchmetrics' KID and FID
take as a custom `feature` module.

* `InceptionFeatures`: torchmetrics' `NoTrainInceptionV3` (torch-fidelity's port of the TF FID
  network, 2048-d pool features). Its weights (`weights-inception-2015-12-05-6726825d.pth`) are
  downloaded by torch-fidelity from its GitHub releases into the torch hub cache
  (`~/.cache/torch/hub/checkpoints/`) on first use; offline, point `weights_path` at a local copy.
* `DigitsFeatures`: the 128-d penultimate layer of a small CNN trained on the training split of
  scikit-learn's digits (which ship inside scikit-learn), so KID on digits works with no network.
  It is trained once (seconds on a CPU) and cached; its held-out accuracy is reported.
"""

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..digits import BUILTIN_DATASET, digits_split

INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
DIGITS_CLASSIFIER_VERSION = 1


def cache_dir() -> Path:
    """Where trained helpers are cached: `$DENOISING_DIFFUSION_CACHE` or `~/.cache/denoising_diffusion`."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "denoising_diffusion"
    return Path(os.environ.get("DENOISING_DIFFUSION_CACHE", default))


class InceptionFeatures(nn.Module):
    """2048-d Inception-v3 pool features of images in [0, 1] (RGB; grayscale is repeated)."""

    num_features = 2048

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path
            )
        except ModuleNotFoundError as error:
            raise RuntimeError(
                "Inception features need torch-fidelity: `pip install 'denoising-diffusion[inception]'`, "
                "or use features='digits' for the built-in digits."
            ) from error
        except Exception as error:  # noqa: BLE001 - download failures come in many types
            raise RuntimeError(
                f"Could not load the Inception-v3 weights for KID ({error}). They are downloaded on first use "
                f"from {INCEPTION_WEIGHTS_URL} into the torch hub cache (~/.cache/torch/hub/checkpoints/). "
                "Offline, copy that file there or pass its path as inception_weights (--inception_weights)."
            ) from error

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        return self.net((images.clamp(0, 1) * 255).to(torch.uint8)).reshape(images.shape[0], -1)


class DigitsClassifier(nn.Module):
    """A small CNN for 8x8 grayscale digits in [0, 1]; `features()` is its 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """Any (N, C, H, W) images in [0, 1] -> (N, 1, 8, 8): channel mean, area resize."""
        images = images.float().mean(dim=1, keepdim=True)
        if images.shape[-2:] != (8, 8):
            images = F.interpolate(images, size=(8, 8), mode="area")
        return images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.prepare(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_digits_classifier(epochs: int = 40, seed: int = 0) -> tuple[DigitsClassifier, float]:
    """Train `DigitsClassifier` on 70% of the digits; return it and its accuracy on the other 30%."""
    x_train, x_test, y_train, y_test = digits_split(seed)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train), generator=generator).split(64):
            # Small random shifts make the features robust to what a generator gets slightly wrong.
            batch = torch.roll(x_train[idx], shifts=tuple(torch.randint(-1, 2, (2,), generator=generator).tolist()),
                               dims=(2, 3))
            loss = F.cross_entropy(model(batch), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, accuracy


def load_digits_classifier() -> tuple[DigitsClassifier, float]:
    """The cached digits classifier (trained on first use) and its held-out accuracy."""
    from safetensors.torch import load_file, save_file

    folder = cache_dir()
    weights = folder / f"digits_classifier_v{DIGITS_CLASSIFIER_VERSION}.safetensors"
    meta = weights.with_suffix(".json")
    if weights.exists() and meta.exists():
        model = DigitsClassifier()
        model.load_state_dict(load_file(str(weights)))
        return model.eval(), json.loads(meta.read_text())["test_accuracy"]
    model, accuracy = train_digits_classifier()
    folder.mkdir(parents=True, exist_ok=True)
    # Several processes may train it at once: each writes its own temporary files, then renames them
    # into place (the same bytes whoever wins), the metadata last, so a reader sees both or neither.
    suffix = f".{os.getpid()}.partial"
    partial_weights, partial_meta = weights.with_name(weights.name + suffix), meta.with_name(meta.name + suffix)
    save_file(model.state_dict(), str(partial_weights))
    partial_meta.write_text(json.dumps({"test_accuracy": accuracy, "test_split": "30% of sklearn digits, stratified, seed 0"}))
    os.replace(partial_weights, weights)
    os.replace(partial_meta, meta)
    return model, accuracy


class DigitsFeatures(nn.Module):
    """128-d features of the cached digits classifier, for images in [0, 1] of any size and channels."""

    num_features = 128

    def __init__(self):
        super().__init__()
        self.classifier, self.test_accuracy = load_digits_classifier()
        self.classifier.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)

    @torch.no_grad()
    def recognised_fraction(self, images: torch.Tensor, threshold: float = 0.9, batch_size: int = 256) -> float:
        """The fraction of `images` (N, C, H, W) in [0, 1] that the classifier assigns to one digit with
        probability >= `threshold`: a quality number anyone can read (a blurred or malformed digit
        is not recognised with confidence)."""
        device = next(self.parameters()).device
        confident = [F.softmax(self.classifier(chunk.to(device).float()), dim=1).amax(dim=1) >= threshold
                     for chunk in images.split(batch_size)]
        return torch.cat(confident).float().mean().item()

    @torch.no_grad()
    def class_balance(self, images: torch.Tensor, threshold: float = 0.9, batch_size: int = 256) -> list[float]:
        """For each digit 0..9, its share of the recognised `images` over its share of all 1,797 real digits:
        1.0 everywhere is the real balance; guidance that buys recognition by dropping a hard digit shows
        as a ratio well below 1 for it."""
        from sklearn.datasets import load_digits

        device = next(self.parameters()).device
        probs = torch.cat([F.softmax(self.classifier(chunk.to(device).float()), dim=1).cpu()
                           for chunk in images.split(batch_size)])
        confident, predicted = probs.max(dim=1)
        counts = torch.bincount(predicted[confident >= threshold], minlength=10).double()
        real = torch.bincount(torch.as_tensor(load_digits().target), minlength=10).double()
        return ((counts / counts.sum().clamp(min=1)) / (real / real.sum())).tolist()

    def held_out_recognised_fraction(self, threshold: float = 0.9, size: int = 8) -> float:
        """`recognised_fraction` of the real digits the classifier never saw (30% of sklearn's digits), at
        `size` x `size` (upscaled as the training data is: bicubic, through 8-bit images)."""
        _, x_test, _, _ = digits_split()
        if size != 8:
            x_test = upscale_digits(x_test, size)
        return self.recognised_fraction(x_test, threshold)


def upscale_digits(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, 8, 8) digits in [0, 1] -> (N, 1, size, size), resized as the training data is (PIL bicubic, 8-bit)."""
    import numpy as np
    import PIL.Image

    out = [np.asarray(PIL.Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").resize(
        (size, size), PIL.Image.Resampling.BICUBIC)) for image in images[:, 0].numpy()]
    return torch.from_numpy(np.stack(out)).float().div(255.0)[:, None]


def resolve_features(name, dataset_name: str | None, train_data_dir: str | None = None):
    """`name` itself unless it is "auto"; then "digits" for the built-in digits (offline) and
    "inception" for any other data."""
    if name != "auto":
        return name
    return "digits" if dataset_name == BUILTIN_DATASET and not train_data_dir else "inception"


def feature_extractor(name: str, inception_weights: str | None = None) -> nn.Module:
    """`"digits"` or `"inception"` -> the feature module."""
    if name == "digits":
        return DigitsFeatures()
    if name == "inception":
        return InceptionFeatures(inception_weights)
    raise ValueError(f"Unknown features {name!r}; expected 'digits' or 'inception'.")
