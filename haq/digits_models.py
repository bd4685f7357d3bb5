"""The two embedded default models and the recipe that trains them on ``digits``.

Both ship trained with the package (``haq/weights/<name>.pt``, state dicts produced by
:func:`train_digits_model` with the default :class:`TrainRecipe`), so every machine searches
the same weights: they are loaded with ``torch.load(weights_only=True)`` and checked against
the SHA-256 in :data:`SHIPPED_SHA256`. ``load_digits_model(name, retrain=True)`` trains them
anew (about 20 s each on 2 cores) and caches the result in the user cache dir, keyed by a hash
of the recipe; a cached file whose hash or weights do not check out is retrained, never trusted.
Training is deterministic on one machine, but floating-point differences between machines
make retrained weights differ slightly from the shipped ones (test accuracy >= 98.5 % either way).

* ``digits-mobilenet``: MobileNetV2-style inverted residuals with depthwise convs,
  17 quantizable layers.
* ``digits-resnet``: ResNet basic blocks with 1x1 downsample convs, 10 quantizable layers.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from importlib import resources

import torch
from torch import nn

from haq.atomic import atomic_write_bytes, atomic_write_json
from haq.cache import cache_dir, content_key, file_sha256
from haq.errors import ModelError

#: SHA-256 of the shipped state dicts (haq/weights/<name>.pt); test accuracy 99.17 % and 99.72 %.
SHIPPED_SHA256 = {
    "digits-mobilenet": "52aa74834e5f05b707f1ab45c252c6d67134143cbb83efe24152e1a5932fa17b",
    "digits-resnet": "e79ea763435ae20f56d75b166da0d5a19105b71da98359595af8586436fbc24b",
}


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped when t=1) -> 3x3 depthwise -> 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class DigitsMobileNet(nn.Module):
    """Input (N, 1, 8, 8) -> logits (N, 10). Spatial 8 -> 4 -> 2."""

    # (expand t, out channels, stride) per block
    BLOCKS = ((1, 16, 1), (4, 32, 2), (4, 32, 1), (4, 48, 2), (4, 48, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        feats: list[nn.Module] = [_conv_bn(in_channels, 16, 3)]
        cin = 16
        for t, c, s in self.BLOCKS:
            feats.append(InvertedResidual(cin, c, s, t))
            cin = c
        feats.append(_conv_bn(cin, 128, 1))
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv downsample reads the same input as conv1."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idn = x if self.downsample is None else self.downsample(x)
        return self.relu(out + idn)


class DigitsResNet(nn.Module):
    """Input (N, 1, 8, 8) -> logits (N, 10). Spatial 8 -> 4 -> 2."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


ARCHITECTURES: dict[str, type[nn.Module]] = {"digits-mobilenet": DigitsMobileNet, "digits-resnet": DigitsResNet}


@dataclass(frozen=True)
class TrainRecipe:
    """How a default model is trained; its hash names the cache file."""

    arch: str
    epochs: int = 60  #: passes over the 1,078 training images
    batch_size: int = 64
    lr: float = 3e-3  #: AdamW peak learning rate (one-cycle schedule)
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    shift_px: int = 1  #: random translation augmentation, pixels
    seed: int = 0
    version: int = 3  #: bump to invalidate every cached checkpoint


def train_digits_model(recipe: TrainRecipe) -> tuple[nn.Module, float]:
    """Train ``recipe.arch`` on the digits training split; returns (model, test accuracy).

    Runs on one thread: the layers are tiny (8x8 images), so more threads only add
    synchronisation, and a fixed thread count keeps the result bit-identical across machines.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(recipe)
    finally:
        torch.set_num_threads(threads)


def _train(recipe: TrainRecipe) -> tuple[nn.Module, float]:
    from haq.data import load_digits

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    data = load_digits()
    assert data.train is not None
    x, y = data.train.x, data.train.y
    model = ARCHITECTURES[recipe.arch]()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = (len(y) + recipe.batch_size - 1) // recipe.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    pad = recipe.shift_px
    for _ in range(recipe.epochs):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            xb = x[idx]
            if pad:
                xb = nn.functional.pad(xb, (pad, pad, pad, pad), value=float(x.min()))
                dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
                xb = xb[:, :, dy : dy + 8, dx : dx + 8]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(data.test.x).argmax(1) == data.test.y).float().mean().item()
    return model, acc


def load_digits_model(arch: str, retrain: bool = False) -> nn.Module:
    """The trained default model: the shipped weights (hash-checked), or with ``retrain``
    the recipe's result, from the cache or trained now (and cached)."""
    if not retrain:
        return load_shipped(arch)
    recipe = TrainRecipe(arch)
    key = content_key(asdict(recipe))
    folder = cache_dir("models")
    weights, meta_path = folder / f"{arch}-{key}.pt", folder / f"{arch}-{key}.json"
    if not retrain and weights.is_file() and meta_path.is_file():
        model = _load_cached(arch, weights, meta_path)
        if model is not None:
            return model
    model, acc = train_digits_model(recipe)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(weights, buf.getvalue())
    atomic_write_json(meta_path, {"recipe": asdict(recipe), "sha256": file_sha256(weights), "test_accuracy": acc})
    return model


def _load_cached(arch: str, weights, meta_path) -> nn.Module | None:
    """A cached model if its file hash and state dict check out, else None (retrain)."""
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") != file_sha256(weights):
            return None
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model = ARCHITECTURES[arch]()
        model.load_state_dict(state)
    except Exception:  # corrupt or stale cache of any kind: retrain
        return None
    return model.eval()


def load_shipped(arch: str) -> nn.Module:
    """The state dict shipped in ``haq/weights/``, loaded without unpickling objects and
    refused (one line) if its bytes are not the ones released."""
    data = resources.files("haq").joinpath(f"weights/{arch}.pt").read_bytes()
    if hashlib.sha256(data).hexdigest() != SHIPPED_SHA256[arch]:
        raise ModelError(
            f"the shipped weights of {arch} (haq/weights/{arch}.pt) do not match their SHA-256; "
            "reinstall haq, or retrain them with haq.digits_models.load_digits_model(name, retrain=True)"
        )
    model = ARCHITECTURES[arch]()
    model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return model.eval()
