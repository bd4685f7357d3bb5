"""Data: the splits a search needs, held in memory as tensors.

A search evaluates hundreds of policies on the same images, so each split is decoded and
transformed once and kept as one ``(N, C, H, W)`` float tensor. Three splits are used:

* ``calib`` - calibration images (activation ranges, Hessian traces); from the training
  split when the data set has one.
* ``val`` - what every search method measures accuracy on.
* ``test`` - measured once per final policy; never seen by a search.

Beside them the *fidelity set* (:meth:`DataSplits.fidelity_parts`): every image a search may
see - the training images when the data set has them (they include the calibration ones),
else the calibration split, the validation split, and optional unlabeled extra images
(``--unlabeled PATH``) - never the test split. Labels are not needed there: a policy is judged
by how closely its outputs follow the float model's (KL divergence, top-1 agreement), a
low-variance signal on many more images than the labelled validation split.

Sources: ``digits`` (scikit-learn's bundled 8x8 handwritten digits: no download) and
``imagefolder:PATH`` (torchvision ``ImageFolder``, standard ImageNet transforms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from haq.errors import DataError, UnknownNameError

SPLITS = ("calib", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Split:
    """Images ``x`` of shape ``(N, C, H, W)`` (float32, normalised) and labels ``y`` ``(N,)``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def head(self, n: int | None) -> Split:
        return self if n is None or n >= len(self) else Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class DataSplits:
    """Every split of one data set, plus what a model needs to know about it."""

    name: str
    input_shape: tuple[int, int, int]  #: (C, H, W) of one image
    num_classes: int
    calib: Split
    val: Split
    test: Split
    train: Split | None = None  #: only the embedded data set has one (to train the default models)
    unlabeled: Split | None = None  #: extra images without labels (y = -1), fidelity set only

    def fidelity_parts(self) -> list[Split]:
        """The fidelity set as parts, not concatenated (a copy of ImageNet-sized images would
        double the memory): training (or calibration) images, validation, unlabeled."""
        parts = [self.train if self.train is not None else self.calib, self.val]
        return parts + ([self.unlabeled] if self.unlabeled is not None else [])

    def fidelity_description(self) -> dict[str, object]:
        """Size and source of the fidelity set, for config.json."""
        first = "train" if self.train is not None else "calib"
        sources = [first, "val"] + (["unlabeled"] if self.unlabeled is not None else [])
        return {"images": sum(len(p) for p in self.fidelity_parts()), "source": " + ".join(sources),
                "labelled_validation_images": len(self.val)}

    def split(self, name: str) -> Split:
        if name not in (*SPLITS, "train") or (name == "train" and self.train is None):
            raise DataError(f"split {name!r} does not exist in {self.name}: use one of {', '.join(SPLITS)}")
        return getattr(self, name)


# ----- the embedded default: scikit-learn digits -------------------------------------------
DIGITS_SEED = 0
DIGITS_MEAN = 4.884  # pixel mean of the whole digits set (0-16 scale)
DIGITS_STD = 6.017  # pixel std of the whole digits set


def load_digits(calibration_images: int = 256, seed: int = DIGITS_SEED) -> DataSplits:
    """scikit-learn's 1,797 real 8x8 digits, stratified 60/20/20 train/val/test.

    ``calib`` is the first ``calibration_images`` of the (shuffled) training split: post-
    training quantization calibrates on data the model was trained on, never on val/test.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = ((bunch.images.astype(np.float32) - DIGITS_MEAN) / DIGITS_STD)[:, None]  # (N, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_te, y_val, y_te = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    train = Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr))
    return DataSplits(
        name="digits",
        input_shape=(1, 8, 8),
        num_classes=10,
        calib=train.head(calibration_images),
        val=Split(torch.from_numpy(x_val), torch.from_numpy(y_val)),
        test=Split(torch.from_numpy(x_te), torch.from_numpy(y_te)),
        train=train,
    )


# ----- real users: an ImageFolder ------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


DEFAULT_MAX_IMAGES = 5000  #: images an ImageFolder contributes unless --max-images says otherwise


def load_imagefolder(
    root: str | Path,
    image_size: int = 224,
    fractions: Sequence[float] = (0.2, 0.4, 0.4),
    max_images: int | None = 5000,
    seed: int = 0,
) -> DataSplits:
    """A torchvision ``ImageFolder`` (one sub-folder per class) split into calib/val/test.

    Images get the standard ImageNet evaluation transform (resize to ``image_size*256/224``,
    centre crop ``image_size``, normalise). The split is stratified by class with ``seed``;
    ``fractions`` are (calib, val, test). At most ``max_images`` images are loaded in all
    (a search needs a little data, not the whole set).
    """
    from torchvision import datasets

    if not str(root).strip():
        raise DataError("--data imagefolder: needs a folder: write imagefolder:PATH (one sub-folder per class)")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"data folder {root} is a file, not a folder; pass --data imagefolder:PATH of a folder "
                        "with one sub-folder per class")
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass --data imagefolder:PATH with one sub-folder per class")
    _check_imagefolder(root)
    tf = _imagenet_transform(image_size)
    try:
        ds = datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"data folder {root} holds no images in class sub-folders ({exc}); "
                        "lay it out as ROOT/CLASS/IMAGE.jpg") from None
    targets = np.asarray(ds.targets)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(targets))
    if max_images is not None:
        order = order[:max_images]
    parts: list[list[int]] = [[], [], []]
    for cls in np.unique(targets[order]):
        idx = order[targets[order] == cls]
        cuts = np.cumsum([int(round(f * len(idx))) for f in fractions[:2]])
        for p, chunk in enumerate(np.split(idx, cuts)):
            parts[p].extend(chunk.tolist())
    if any(len(p) == 0 for p in parts):
        raise DataError(
            f"data folder {root} has too few images ({len(order)}) to give calibration, validation and test "
            "splits; add images (a few per class at least)"
        )

    def load(indices: list[int]) -> Split:
        xs, ys = [], []
        for i in sorted(indices):
            path, label = ds.samples[i]
            try:
                img, _ = ds[i]
            except Exception as exc:  # PIL raises many types for broken files
                raise DataError(f"image {path} cannot be read ({type(exc).__name__}); remove or replace it") from None
            xs.append(img)
            ys.append(label)
        return Split(torch.stack(xs), torch.tensor(ys, dtype=torch.int64))

    calib, val, test = (load(p) for p in parts)
    return DataSplits(
        name=f"imagefolder:{root}",
        input_shape=tuple(calib.x.shape[1:]),  # type: ignore[arg-type]
        num_classes=len(ds.classes),
        calib=calib,
        val=val,
        test=test,
    )


def _imagenet_transform(image_size: int):  # noqa: ANN202 - a torchvision transform
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(int(round(image_size * 256 / 224))),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _check_imagefolder(root: Path) -> None:
    classes = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not classes:
        raise DataError(f"data folder {root} has no class sub-folders; lay it out as ROOT/CLASS/IMAGE.jpg")
    n_images = 0
    for d in classes:
        for f in sorted(d.rglob("*")):
            if f.is_dir() or f.name.startswith("."):
                continue
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{f} is not an image (extension {f.suffix or 'none'}); an ImageFolder holds only images "
                    f"({', '.join(IMAGE_EXTENSIONS)}) - move it out"
                )
            n_images += 1
    if n_images == 0:
        raise DataError(f"data folder {root} is empty: its class folders hold no images")


def load_unlabeled(root: str | Path, image_size: int = 224, max_images: int | None = 5000) -> Split:
    """Every image below ``root`` (any layout, no labels: ``y`` is -1), with the ImageNet
    evaluation transform - extra images for the fidelity set."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--unlabeled {root} is not a folder of images; pass a folder (any layout) or drop --unlabeled")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"--unlabeled {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    tf = _imagenet_transform(image_size)
    xs = []
    for f in files[:max_images]:
        try:
            with Image.open(f) as img:
                xs.append(tf(img.convert("RGB")))
        except (OSError, UnidentifiedImageError):
            raise DataError(f"image {f} cannot be read; remove or replace it") from None
    return Split(torch.stack(xs), torch.full((len(xs),), -1, dtype=torch.int64))


def load_data(
    spec: str, image_size: int | None = None, calibration_images: int | None = None, unlabeled: str | None = None,
    max_images: int | None = None,
) -> DataSplits:
    """Data from a CLI spec: ``digits`` or ``imagefolder:PATH`` (at most ``max_images`` images,
    default 5000); ``unlabeled`` = a folder of extra images for the fidelity set."""
    if spec == "digits":
        if unlabeled is not None:
            raise DataError("--unlabeled adds images to an ImageFolder's fidelity set; the digits data uses its "
                            "training images already - drop --unlabeled")
        return load_digits(calibration_images=calibration_images or 256)
    if spec.startswith("imagefolder:"):
        data = load_imagefolder(spec[len("imagefolder:") :], image_size=image_size or 224,
                                max_images=max_images or DEFAULT_MAX_IMAGES)
        if unlabeled is not None:
            from dataclasses import replace

            data = replace(data, unlabeled=load_unlabeled(unlabeled, image_size or 224, max_images or DEFAULT_MAX_IMAGES))
        return data
    import difflib

    close = difflib.get_close_matches(spec, list(DATA_SOURCES), n=2)
    hint = f"did you mean {', '.join(close)}?" if close else "use digits or imagefolder:PATH"
    raise UnknownNameError(f"unknown data {spec!r}: {hint}")


DATA_SOURCES = {
    "digits": "scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), 60/20/20 split; no download",
    "imagefolder:PATH": "a folder of class sub-folders of images (torchvision ImageFolder, ImageNet transforms)",
}


def list_data() -> list[tuple[str, str]]:
    return list(DATA_SOURCES.items())
