"""An emoji-category classifier for offline RGB quality numbers: KID on its 128-d penultimate
features, and how often a sample is recognised as the category asked for.

Inception weights cannot be downloaded offline, so the emoji benchmarks (`emoji_quality.py`,
`run.py --features emoji`) use a small CNN trained on 70% of the emoji (stratified, seed 0) to tell
the 9 categories apart at the model's resolution. These KIDs are NOT comparable with published
Inception KIDs: they compare runs measured here with each other.
"""

import torch
import torch.nn.functional as F
from torch import nn


class CategoryClassifier(nn.Module):
    """A small CNN for RGB images in [0, 1] at `size` (images of other sizes are resized)."""

    def __init__(self, size: int, classes: int = 9):
        super().__init__()
        self.size = size
        block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(),  # noqa: E731
                                           nn.MaxPool2d(2))
        self.conv = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(128, 128), nn.SiLU())
        self.head = nn.Linear(128, classes)

    def features(self, images):
        images = images.float()
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="area")
        return self.fc(self.conv(images * 2 - 1))

    def forward(self, images):
        return self.head(self.features(images))


def load_emoji(path: str, size: int):
    """The emoji dataset at `path` (benchmarks/data/emoji.py) at `size`: images (N, 3, size, size) in
    [0, 1], their category labels (N,) and the category names."""
    from datasets import load_from_disk

    from denoising_diffusion.training.config import TrainingConfig
    from denoising_diffusion.training.data import prepare_dataset

    config = TrainingConfig(dataset_name=path, resolution=size, channels=3, label_column="label",
                            normalization="minus_one_one")
    data = prepare_dataset(config)
    names = load_from_disk(path).features["label"].names
    return data.pixels(data.num_examples).float() / 255.0, data.labels().long(), names


def train_classifier(images, labels, size, epochs=30, seed=0):
    from sklearn.model_selection import train_test_split

    idx_train, idx_test = train_test_split(torch.arange(len(labels)), test_size=0.3, random_state=seed,
                                           stratify=labels)
    torch.manual_seed(seed)
    model = CategoryClassifier(size, int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    # Balanced batches: "People & Body" holds most images (skin-tone variations).
    weights = 1.0 / torch.bincount(labels[idx_train]).float()[labels[idx_train]]
    for _ in range(epochs):
        model.train()
        order = idx_train[torch.multinomial(weights, len(idx_train), replacement=True, generator=generator)]
        for batch in order.split(128):
            x = images[batch]
            shift = tuple(torch.randint(-2, 3, (2,), generator=generator).tolist())
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(c).argmax(1) for c in images[idx_test].split(512)])
    recall = [(predicted[labels[idx_test] == c] == c).float().mean().item() for c in range(int(labels.max()) + 1)]
    return model, (predicted == labels[idx_test]).float().mean().item(), sum(recall) / len(recall)


class CategoryFeatures(nn.Module):
    """The classifier's 128-d features of images in [0, 1]."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images):
        return self.classifier.features(images)


def category_features(config) -> tuple[nn.Module, float]:
    """The classifier's features for `config`'s emoji data at its resolution
    (images in [0, 1] -> (N, 128)), and the classifier's held-out balanced accuracy."""
    images, labels, _ = load_emoji(config.dataset_name, config.resolution)
    with torch.enable_grad():
        classifier, _, balanced = train_classifier(images, labels, config.resolution)
    return CategoryFeatures(classifier).eval(), balanced
