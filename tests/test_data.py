"""The embedded digits split and the ImageFolder loader real users point at their data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from haq.data import load_data, load_digits, load_imagefolder
from haq.errors import DataError, UnknownNameError


def test_digits_is_a_stratified_60_20_20_split_with_no_overlap(digits):
    assert digits.train is not None
    sizes = (len(digits.train), len(digits.val), len(digits.test))
    assert sum(sizes) == 1797
    assert sizes == pytest.approx((1078, 359, 360), abs=2)
    for split in (digits.val, digits.test):
        counts = np.bincount(split.y.numpy(), minlength=10)
        assert counts.min() >= 33 and counts.max() <= 38  # stratified: ~36 per class
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10


def test_digits_are_normalised_and_calibration_comes_from_training_images(digits):
    x = digits.train.x
    assert abs(float(x.mean())) < 0.1 and 0.8 < float(x.std()) < 1.2
    assert torch.equal(digits.calib.x, digits.train.x[: len(digits.calib)])


def test_the_split_is_deterministic():
    a, b = load_digits(), load_digits()
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.val.y, b.val.y)


def _make_imagefolder(root, classes=3, per_class=10, size=40):
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = (rng.random((size, size, 3)) * 80 + c * 80).astype(np.uint8)
            Image.fromarray(arr).save(d / f"img{i}.png")
    return root


def test_imagefolder_loads_generated_images_into_three_stratified_splits(tmp_path):
    root = _make_imagefolder(tmp_path / "imgs")
    data = load_imagefolder(root, image_size=32)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 3
    assert len(data.calib) + len(data.val) + len(data.test) == 30
    for split in (data.calib, data.val, data.test):
        assert set(split.y.tolist()) == {0, 1, 2}
    assert data.val.x.dtype == torch.float32
    assert load_data(f"imagefolder:{root}", image_size=32).name == f"imagefolder:{root}"


def test_an_empty_imagefolder_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="is empty: its class folders hold no images"):
        load_imagefolder(tmp_path)


def test_a_folder_without_class_folders_is_refused(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        load_imagefolder(tmp_path)


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_imagefolder(tmp_path / "nope")


def test_a_non_image_file_is_named(tmp_path):
    root = _make_imagefolder(tmp_path / "imgs")
    (root / "class1" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt is not an image \(extension .txt\)"):
        load_imagefolder(root)


def test_a_corrupt_image_is_named(tmp_path):
    root = _make_imagefolder(tmp_path / "imgs")
    (root / "class2" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg cannot be read"):
        load_imagefolder(root, image_size=32)


def test_unknown_data_names_suggest(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean digits"):
        load_data("digit")
