"""The device a command runs on (:func:`resolve_device`), whether what it needs fits in its memory
(:func:`check_fits`, before a command writes anything), and how a network runs there: in a mixed
precision (:class:`Autocast`), compiled (:class:`CompiledNetwork`)."""

from __future__ import annotations

import os
import warnings

import torch

__all__ = ["AMP_DTYPES", "Autocast", "CompiledNetwork", "available_devices", "check_batch_fits"]
__all__ += ["amp_dtype", "check_fits", "resolve_device", "sampling_network"]

#: The mixed precisions a network can run in (``--amp``): their torch dtypes (none: as it is).
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices a command can sample or train on here: ``cpu``, then ``cuda``, ``cuda:0`` …
    when torch sees GPUs, then ``mps`` on a Mac that has it."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a device (None: ``cuda`` when available, else ``cpu``); a one-line ValueError naming
    the devices available here for a name that is not a device or cannot be used here (``meta`` ...)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = f"available here: {', '.join(available_devices())}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as e:
        # torch's message lists every device type it knows of, most of them unusable here.
        raise ValueError(f"--device {str(name)!r} is not a device ({available})") from e
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine ({available})")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s) ({available})")
        return device
    if device.type == "mps" and _mps_available():
        return device
    if device.type == "meta":
        raise ValueError(f"--device meta holds no data: nothing can be computed on it ({available})")
    raise ValueError(f"--device {name}: {device.type} is not available here or not supported ({available})")


def _memory_bytes(device: torch.device) -> int | None:
    """The device's memory in bytes (a CPU's or a Mac's: the machine's RAM); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_batch_fits(
    device: torch.device, batch_size: int, values_per_image: int, option: str = "--batch-size"
) -> None:
    """A ValueError when ``batch_size`` images of ``values_per_image`` float32 values each (a lower bound
    on one batch) exceed the memory of ``device``: refused before anything is written or allocated."""
    check_fits(device, batch_size * values_per_image * 4, f"{option} {batch_size}: one batch", f"a smaller {option}")


def check_fits(device: torch.device, need: int, what: str, instead: str) -> None:
    """A ValueError ``WHAT needs at least N GiB on DEVICE, which has M GiB; use INSTEAD`` when
    ``need`` bytes exceed the memory of ``device`` (nothing is checked where it is not known)."""
    have = _memory_bytes(device)
    if have is not None and need > have:
        raise ValueError(f"{what} needs at least {_gib(need)} on {device}, which has {_gib(have)}; use {instead}")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


class CompiledNetwork(torch.nn.Module):
    """``model`` under ``torch.compile`` for fixed shapes: compiled on the first call (tens of
    seconds on a CPU; inductor keeps what it built in ``TORCHINDUCTOR_CACHE_DIR``, by default under
    the temporary folder, for later runs). Where the backend cannot compile on this machine (no
    C++ compiler, say), the first call warns why and the network runs uncompiled. An error after
    the first call has compiled (the network's own, or the backward's compile in training) is raised."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.config, self.compiled_once = model, getattr(model, "config", None), False
        self.__dict__["compiled"] = torch.compile(model, dynamic=False)  # not a second submodule

    def forward(self, *args):
        if self.compiled is None:
            return self.model(*args)
        if self.compiled_once:
            return self.compiled(*args)
        try:
            out = self.compiled(*args)
        except Exception as e:  # noqa: BLE001 - dynamo and inductor fail in many ways
            warnings.warn(f"torch.compile failed here ({type(e).__name__}); the network runs uncompiled", stacklevel=2)
            self.__dict__["compiled"] = None
            return self.model(*args)
        self.compiled_once = True
        return out


def amp_dtype(amp: str) -> torch.dtype | None:
    """The dtype of the mixed precision ``amp`` (``--amp``; None for ``none``); a ValueError naming
    the choices for another name."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    return AMP_DTYPES[amp]


class Autocast(torch.nn.Module):
    """``net`` run under autocast to the mixed precision ``dtype`` (None: as it is). The UNet hands
    ε back in its input's dtype, and :class:`blurdiff.diffusion.ReferenceResidual` keeps its
    Gaussian reference in the data's precision, inside or outside this."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.net, self.dtype, self.config = net, dtype, getattr(net, "config", None)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.net(x_t, t)
        with torch.autocast(x_t.device.type, dtype=self.dtype):
            return self.net(x_t, t)


def sampling_network(model: torch.nn.Module, amp: str = "none", compile: bool = False) -> torch.nn.Module:
    """``model`` as sampling runs it: in the mixed precision ``amp`` (a key of :data:`AMP_DTYPES`;
    ε comes back in the caller's dtype), under ``torch.compile`` (:class:`CompiledNetwork`) or both."""
    dtype = amp_dtype(amp)
    network = model if dtype is None else Autocast(model, dtype)
    return CompiledNetwork(network) if compile else network
