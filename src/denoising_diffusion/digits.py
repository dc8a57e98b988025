"""The built-in dataset: scikit-learn's 1,797 handwritten digits (8x8, they ship inside scikit-learn).

`dataset_name: digits` trains on them offline, and the digits classifier behind KID on digits
(`evaluation.features`) is trained on a fixed 70% of them and checked on the other 30%.
"""

import numpy as np
import PIL.Image
import torch

BUILTIN_DATASET = "digits"  # the `dataset_name` that means this dataset


def digits_dataset():
    """The digits as a `datasets.Dataset`: `image` (grayscale PIL images, pixel values 0..16 scaled
    to 0..255) and `label` (a `ClassLabel` "0".."9")."""
    from datasets import ClassLabel, Dataset, Features, Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [PIL.Image.fromarray(np.round(img * (255.0 / 16.0)).astype(np.uint8), mode="L") for img in digits.images]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    return Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)


def digits_split(seed: int = 0):
    """`(x_train, x_test, y_train, y_test)`: 70% / 30% of the digits, stratified, images (N, 1, 8, 8)
    in [0, 1] and labels (N,)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(digits.target, dtype=torch.long)
    return train_test_split(images, labels, test_size=0.3, random_state=seed, stratify=labels)
