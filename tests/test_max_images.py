"""``--max-images`` bounds how many images an ImageFolder contributes (and so the memory the
splits hold); it is part of the search config, since the splits change the results."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from haq.config import SearchConfig
from haq.data import load_data
from haq.errors import ConfigError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for i in range(40):
        path = root / f"class_{i % 4}" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return root


def test_max_images_bounds_the_images_of_every_split_together(folder):
    data = load_data(f"imagefolder:{folder}", image_size=32, max_images=20)
    assert len(data.calib) + len(data.val) + len(data.test) == 20
    everything = load_data(f"imagefolder:{folder}", image_size=32)
    assert len(everything.calib) + len(everything.val) + len(everything.test) == 40


def test_max_images_is_a_config_field_checked_before_any_work():
    assert SearchConfig(max_images=100).to_dict()["max_images"] == 100
    with pytest.raises(ConfigError, match="--max-images 2"):
        SearchConfig(max_images=2)
