"""The FID Inception-v3 network (pool3 features) of ``pytorch-fid``, written without torchvision.

It is the TensorFlow ``inception-2015-12-05`` graph ported to PyTorch: torchvision's Inception-v3
with 1008 classes, other weights, and TensorFlow's pooling: the average pools of ``Mixed_5b..5d``,
``Mixed_6b..6e`` and ``Mixed_7b`` do not count the zero padding, and ``Mixed_7c`` max-pools. Module
and parameter names are torchvision's ``Inception3(aux_logits=False, num_classes=1008)``, so the
published ``pt_inception-2015-12-05-6726825d.pth`` loads with ``strict=True``; ``fc`` is only
there for that. Input handling is pytorch-fid's (see :class:`FIDInceptionV3`).
Weights are never downloaded; only the published file (sha256 ``6726825d…``, the torch hub prefix in
its name) gives FIDs comparable with published ones (:func:`load_fid_inception`).
"""

from __future__ import annotations

import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blurdiff.atomic import file_sha256
from blurdiff.output_folders import some_names

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_SHA256_PREFIX",
    "FID_WEIGHTS_URL",
    "FIDInceptionV3",
    "InceptionWeightsError",
    "UnpublishedWeightsError",
    "check_weights_file",
    "default_weights_path",
    "is_published_weights",
    "load_fid_inception",
    "random_fid_inception",
    "resolve_weights_path",
]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILENAME
# torch hub names a file <name>-<first 8 hex digits of its sha256>.<ext> and checks that prefix
# on download; it is all that is published about the file's hash, so it is what is checked here.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
FID_INPUT_RESOLUTION = 299
FID_FEATURE_DIM = 2048
FID_NUM_CLASSES = 1008


class InceptionWeightsError(ValueError, RuntimeError):
    """The weights file is not the FID Inception's (another file, a truncated download ...): a
    ``ValueError`` (a bad ``weights`` argument) that is also what a strict ``load_state_dict`` raises."""


class UnpublishedWeightsError(InceptionWeightsError):
    """The weights file's sha256 is not the published file's; ``allow_other_weights=True`` uses it anyway."""


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; keys ``conv.*`` and ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TensorFlow's 3x3/1 "SAME" average pool divides by the number of real (unpadded) inputs.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (``Mixed_5b``, ``Mixed_5c``, ``Mixed_5d``), FID-patched average pool."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (``Mixed_6a``); unpatched."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``Mixed_6b..6e``), FID-patched pool."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_2(bd)
        bd = self.branch7x7dbl_3(bd)
        bd = self.branch7x7dbl_4(bd)
        bd = self.branch7x7dbl_5(bd)
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (``Mixed_7a``); unpatched."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        b7 = self.branch7x7x3_2(b7)
        b7 = self.branch7x7x3_3(b7)
        b7 = self.branch7x7x3_4(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (``Mixed_7b``, ``Mixed_7c``).

    ``pool="avg"`` is the FID patch of ``Mixed_7b`` (average pool without the padding);
    ``pool="max"`` is the FID patch of ``Mixed_7c`` (max pool, as in the TF graph).
    """

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "avg":
            pooled = _tf_avg_pool(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception-v3; ``forward`` maps ``[B, 3, H, W]`` in [0, 1] to ``[B, 2048]``.

    Args:
        resize_input: bilinearly resize to 299x299 first (``align_corners=False``), as pytorch-fid.
        normalize_input: map ``[0, 1]`` to ``[-1, 1]`` (``2 x - 1``), as pytorch-fid.
        input_resolution: the size resized to; 299 for FID, other values (at least 75) for tests.
    """

    def __init__(
        self, resize_input: bool = True, normalize_input: bool = True, input_resolution: int = FID_INPUT_RESOLUTION
    ) -> None:
        super().__init__()
        if input_resolution < 75:
            raise ValueError(f"input_resolution must be at least 75, got {input_resolution}")
        self.resize_input = resize_input
        self.normalize_input = normalize_input
        self.input_resolution = int(input_resolution)

        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        # Present in the published state dict (1008 TF classes); not used for pool3 features.
        self.fc = nn.Linear(FID_FEATURE_DIM, FID_NUM_CLASSES)

    def preprocess(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(x.shape)}")
        if self.resize_input:
            x = F.interpolate(
                x, size=(self.input_resolution, self.input_resolution), mode="bilinear", align_corners=False
            )
        if self.normalize_input:
            x = 2 * x - 1
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.preprocess(x)
        x = self.Conv2d_1a_3x3(x)  # 149
        x = self.Conv2d_2a_3x3(x)  # 147
        x = self.Conv2d_2b_3x3(x)  # 147
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 73
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)  # 71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 35
        x = self.Mixed_5b(x)
        x = self.Mixed_5c(x)
        x = self.Mixed_5d(x)
        x = self.Mixed_6a(x)  # 17
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        x = self.Mixed_6e(x)
        x = self.Mixed_7a(x)  # 8
        x = self.Mixed_7b(x)
        x = self.Mixed_7c(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)  # pool3: [B, 2048]


def default_weights_path() -> Path:
    """Where torch hub (and so pytorch-fid) caches the weights: ``<hub dir>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME


def resolve_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """The weights file to use (``weights`` or the hub cache), or :class:`FileNotFoundError`."""
    path = default_weights_path() if weights is None else Path(weights).expanduser()
    if weights is not None and path.is_dir():
        path = path / FID_WEIGHTS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception weights not found: expected the file {FID_WEIGHTS_FILENAME!r}.\n"
            f"Looked at:\n  - {path}\n"
            f"This library never downloads it. Get it from the pytorch-fid release:\n"
            f"  {FID_WEIGHTS_URL}\n"
            f"and either put it at {default_weights_path()} (the torch hub cache, where pytorch-fid "
            f"also keeps it) or pass its path explicitly (weights=... / --inception-weights)."
        )
    return path


def is_published_weights(sha256: str) -> bool:
    """Whether a file with this (hex) sha256 is pytorch-fid's published weights file."""
    return sha256.lower().startswith(FID_WEIGHTS_SHA256_PREFIX)


def check_weights_file(path: str | os.PathLike, allow_other_weights: bool = False) -> str:
    """The sha256 of the weights file at ``path`` (remembered: :func:`blurdiff.atomic.file_sha256`);
    :class:`UnpublishedWeightsError` if it is not the published file, unless ``allow_other_weights``."""
    path = Path(path)
    sha256 = file_sha256(path)
    if not allow_other_weights and not is_published_weights(sha256):
        raise UnpublishedWeightsError(
            f"{path} is not the FID Inception weights {FID_WEIGHTS_FILENAME}: its sha256 begins "
            f"{sha256[:8]}, the published file's begins {FID_WEIGHTS_SHA256_PREFIX} (other weights, or a "
            f"damaged or incomplete download of {FID_WEIGHTS_URL}). Pass the published file "
            f"(weights=... / --inception-weights), or, to use this one anyway for FIDs that are not "
            f"comparable with published ones, allow_other_weights=True / --allow-other-weights"
        )
    return sha256


def _fill_batchnorm_counters(model: nn.Module, state_dict: dict) -> dict:
    # Files saved before PyTorch 0.4.1 carry no ``num_batches_tracked``; BatchNorm already
    # fills it in on load when the file's metadata says so, this also covers files whose
    # metadata was lost. The counter is unused in eval mode. Every other key must match.
    out = OrderedDict(state_dict)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            key = f"{name}.num_batches_tracked"
            if key not in out:
                out[key] = torch.zeros((), dtype=torch.long)
    return out


def _not_the_weights(path: Path, why: str) -> InceptionWeightsError:
    return InceptionWeightsError(
        f"{path} is not the FID Inception weights {FID_WEIGHTS_FILENAME}: {why}; pass that file "
        f"(weights=... / --inception-weights)"
    )


# What torch.load raises for a file it cannot read as a PyTorch file (garbage, text, a
# truncated download, a pickle of other objects); errors opening the file are not among them.
_TORCH_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, IndexError, ValueError, struct.error)


def _read_state_dict(path: Path) -> dict:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as exc:
        # Only the archive reader's RuntimeError says something useful ("failed finding central
        # directory": a truncated download); the unpickler's messages are about torch itself.
        detail = str(exc).strip().splitlines()[0][:120] if isinstance(exc, RuntimeError) and str(exc).strip() else ""
        why = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        raise _not_the_weights(path, f"not a readable PyTorch weights file ({why})") from exc
    if not isinstance(state_dict, dict):
        raise _not_the_weights(path, f"it does not hold a state dict (got {type(state_dict).__name__})")
    if any(k.startswith("module.") for k in state_dict):
        raise _not_the_weights(path, "keys start with 'module.' (a DataParallel checkpoint?)")
    return state_dict


def _load_strict(model: nn.Module, state_dict: dict, path: Path) -> None:
    """``load_state_dict(strict=True)``, its errors summed up on one line naming the file."""
    expected, got = set(model.state_dict()), set(state_dict)
    problems = []
    if expected - got:
        problems.append(f"Missing key(s): {some_names(sorted(expected - got))}")
    if got - expected:
        problems.append(f"Unexpected key(s): {some_names(sorted(got - expected))}")
    if problems:
        raise _not_the_weights(path, "; ".join(problems))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # shapes (or values) that do not fit
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise _not_the_weights(path, (lines[1:] or lines)[0][:200]) from exc


def load_fid_inception(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu", allow_other_weights: bool = False
) -> FIDInceptionV3:
    """The FID Inception-v3 with pytorch-fid's published weights, in eval mode, no grads.

    Args:
        weights: path to ``pt_inception-2015-12-05-6726825d.pth`` (or a folder holding it).
            ``None`` looks in the torch hub cache (``torch.hub.get_dir()/checkpoints/``).
        device: where to put the network.
        allow_other_weights: accept a file of the right architecture whose sha256 is not the
            published file's (its FIDs are not comparable with published ones).

    Raises:
        FileNotFoundError: the file is not there (the message says where to get it); nothing is
            ever downloaded.
        InceptionWeightsError: the file is not these weights (unreadable, other keys or shapes);
            :class:`UnpublishedWeightsError` when it loads but is not the published file.
    """
    path = resolve_weights_path(weights)
    model = FIDInceptionV3()
    # Structure first: for a file that is not a state dict at all, "unreadable" or "missing
    # keys" says more than "another hash".
    _load_strict(model, _fill_batchnorm_counters(model, _read_state_dict(path)), path)
    check_weights_file(path, allow_other_weights)
    return _finalise(model, device)


def random_fid_inception(
    seed: int = 0, device: str | torch.device = "cpu", input_resolution: int = FID_INPUT_RESOLUTION
) -> FIDInceptionV3:
    """The same architecture with random weights (He-normal convolutions, sane batch norms), for
    plumbing tests only; ``input_resolution`` 75 makes the forward pass ~16x cheaper."""
    gen = torch.Generator().manual_seed(seed)
    model = FIDInceptionV3(input_resolution=input_resolution)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                std = (2.0 / fan_in) ** 0.5
                module.weight.copy_(std * torch.randn(module.weight.shape, generator=gen))
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(1.0 + 0.1 * torch.rand(n, generator=gen))
            elif isinstance(module, nn.Linear):
                module.weight.copy_(0.01 * torch.randn(module.weight.shape, generator=gen))
                module.bias.zero_()
    return _finalise(model, device)


def _finalise(model: FIDInceptionV3, device: str | torch.device) -> FIDInceptionV3:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)
