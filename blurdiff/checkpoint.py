"""Checkpoints (docs/design.md §2), ``RUN/checkpoints/ckpt-{step:08d}.pt``: written atomically,
loaded with ``torch.load(weights_only=True)`` (opening a file someone sent you must not run code, so
``config`` holds plain data only), and turned back into a process and network.

Every checkpoint written by :func:`save_checkpoint` also holds ``checksum``, a SHA-256 of the rest
of its content (:func:`content_checksum`), which :func:`load_checkpoint` verifies: bytes flipped
inside tensor data still unpickle, and would otherwise load as wrong weights. Checkpoints written
before there was a checksum load unverified.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from blurdiff.atomic import atomic_path
from blurdiff.diffusion import BlurDiffusion, ProcessConfig, current_record, eps_model
from blurdiff.statistics import DataStatistics
from blurdiff.unet import UNet, UNetConfig, check_weights

REQUIRED_KEYS = ("step", "model", "ema", "optimizer", "config")
CHECKSUM_KEY = "checksum"
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt-{step:08d}.pt"


def save_checkpoint(state: dict[str, Any], path) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file, flushed and fsynced, then renamed.

    A crash at any moment leaves either the old file or the complete new one, never a torn one.
    """
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"a checkpoint needs the keys {REQUIRED_KEYS}; missing {missing}")
    state = {k: v for k, v in state.items() if k != CHECKSUM_KEY}  # a loaded state carries its old one
    state[CHECKSUM_KEY] = content_checksum(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
    return path


def content_checksum(state: dict[str, Any]) -> str:
    """``sha256:HEX`` of everything in ``state`` but its checksum: the dtype, shape and bytes of
    every tensor and a canonical form of the plain data around them, so that it is the same after
    a save and a load onto another device."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return "sha256:" + h.hexdigest()


def _feed(h, x) -> None:
    # Each item starts with a header that says its kind and length: no two contents feed the same bytes.
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu").contiguous()
        h.update(repr(("tensor", str(t.dtype), tuple(t.shape))).encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(x, dict):  # sorted: the keys of an optimizer state are ints, the others strs
        h.update(f"dict {len(x)}\0".encode())
        for k, v in sorted(x.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0]))):
            _feed(h, k)
            _feed(h, v)
    elif isinstance(x, (list, tuple)):
        h.update(f"list {len(x)}\0".encode())
        for v in x:
            _feed(h, v)
    elif isinstance(x, (set, frozenset)):  # their order changes with the hash seed
        _feed(h, sorted(x, key=repr))
    else:  # str, int, float, bool, None, torch.dtype ...: repr is exact and escapes "\0"
        h.update(repr((type(x).__name__, x)).encode() + b"\0")


def list_checkpoints(run_dir) -> list[Path]:
    """The run's checkpoints, oldest first (by step)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(run_dir, keep: int, protect=()) -> None:
    """Delete all but the newest ``keep`` checkpoints, and but those named in ``protect``."""
    for p in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if p.name not in protect:
            p.unlink(missing_ok=True)


def load_checkpoint(path, map_location="cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, with clear errors for wrong files.

    ValueError: the file's content is not a loadable checkpoint. OSError (and MemoryError) pass
    through unchanged: they say nothing about the file, which may load on the next try.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, MemoryError):
        raise
    except Exception as e:  # an unpickling error names the offending global
        raise ValueError(f"{path} is not a loadable blurdiff checkpoint: {_load_failure(e, path)}") from e
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise ValueError(f"{path} is not a blurdiff checkpoint (needs the keys {REQUIRED_KEYS})")
    if CHECKSUM_KEY in state and state[CHECKSUM_KEY] != content_checksum(state):
        raise ValueError(f"{path}: content does not match its checksum (damaged on disk?)")
    step = state["step"]  # what every reader records, names files by and trains on from
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"{path}: its step must be an integer of at least 0, not {step!r}")
    if isinstance(state["config"], dict) and isinstance(state["config"].get("process"), dict):
        state["config"]["process"] = current_record(state["config"]["process"])
    return state


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``, on the CPU: a ValueError naming it for a
    malformed file (an OSError, which says nothing about the file, passes)."""
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors' own error for a malformed file
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def _load_failure(e: Exception, path: Path) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line. Not torch's advice to load the
    file with ``weights_only=False``: that would run whatever code the file holds."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if found:
        return f"it holds a Python object ({found.group(1)}), which no checkpoint does; not loaded: that could run code"
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    line = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().split("\n")[0].strip()
    return line or type(e).__name__


def networks_of(state: dict[str, Any], path, which: Sequence[str] = ("model", "ema")) -> dict[str, torch.nn.Module]:
    """``{key: network}`` for the weights ``state[key]``: the network the checkpoint's config
    describes, built on the meta device (no memory, no initialisation) and given the checkpoint's
    own tensors. ValueError naming ``path`` when the weights do not fit it or are not finite
    (:func:`blurdiff.unet.check_weights`)."""
    return {key: check_weights(state["config"]["unet"], state[key], path, f"{key} weights") for key in which}


def load_newest_readable(
    run_dir, validate: Callable[[Path, dict[str, Any]], None] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``run_dir`` that loads (and that ``validate(path, state)``, when
    given, accepts: it raises ValueError for a checkpoint that does not fit the run), with its
    path; None if the run has none.

    Newer ones whose content does not load (damaged on disk, not a blurdiff checkpoint, a failed
    checksum) or does not fit are skipped with a warning and, once an older one has loaded,
    renamed to ``NAME.unreadable``: kept for inspection, out of the way of pruning and of the next
    resume. Raises ValueError when checkpoints exist and none loads (then nothing is renamed);
    read errors (OSError) propagate without touching anything.
    """
    bad = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path)
            if validate is not None:
                validate(path, state)
        except ValueError as e:
            bad.append((path, str(e).splitlines()[0][:300]))  # torch's unpickling errors run to many lines
            continue
        for skipped, reason in bad:
            aside = skipped.with_name(skipped.name + ".unreadable")
            n = 1
            while aside.exists():  # an earlier damaged file of the same step stays too
                n += 1
                aside = skipped.with_name(f"{skipped.name}.unreadable-{n}")
            skipped.replace(aside)
            warnings.warn(
                f"skipping {skipped.name}: {reason} (renamed to {aside.name}); resuming from {path.name}",
                stacklevel=2,
            )
        return path, state
    if bad:
        raise ValueError(
            f"no checkpoint in {checkpoint_dir(run_dir)} loads (tried "
            f"{', '.join(p.name for p, _ in bad)}; newest: {bad[0][1]})"
        )
    return None


def resolve_checkpoint(run_dir=None, ckpt=None) -> Path:
    """The checkpoint that ``--run RUN [--ckpt FILE]`` names: ``ckpt`` (a path, or a file name
    inside ``RUN/checkpoints``) when given, else the newest of ``run_dir``; clear errors for the rest."""
    if run_dir is None and ckpt is None:
        raise ValueError("give --run RUN (its newest checkpoint) or --ckpt FILE")
    if run_dir is not None and not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if ckpt is not None:
        path = Path(ckpt)
        if not path.is_file() and run_dir is not None and (checkpoint_dir(run_dir) / ckpt).is_file():
            path = checkpoint_dir(run_dir) / ckpt
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {ckpt}")
        return path
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir(run_dir)} (has the run saved one yet?)")
    return latest


def build_from_checkpoint(
    state: dict[str, Any], use_ema: bool = True, device="cpu", backend: str = "auto", source="the checkpoint"
) -> tuple[BlurDiffusion, torch.nn.Module]:
    """The process (with the run's data statistics, when the checkpoint has them) and the network
    (EMA weights by default) a checkpoint describes, in eval mode. ValueError (naming ``source``,
    the file) for weights that do not fit the network its config describes or are not finite."""
    key = "ema" if use_ema else "model"
    return build_from_config(
        state["config"], state[key], state.get("data_stats"), device, backend, source, f"{key} weights"
    )


def build_from_config(
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    data_stats: dict[str, Any] | None = None,
    device="cpu",
    backend: str = "auto",
    source="the checkpoint",
    what: str = "weights",
    stats_source=None,
) -> tuple[BlurDiffusion, torch.nn.Module]:
    """What :func:`build_from_checkpoint` builds, from a checkpoint's ``config``, the network
    ``weights`` (a state dict) and the ``data_stats`` of :meth:`DataStatistics.to_state`; shared
    with exports (blurdiff.export), so both give the same pair. ``stats_source``: the file of the
    statistics, when not ``source``. The weights are checked on the meta device first
    (:func:`blurdiff.unet.check_weights`: ValueError naming ``source``), so nothing of a size the
    weights do not have is allocated."""
    process = BlurDiffusion(ProcessConfig(**config["process"]), backend)
    try:
        process.data_stats = DataStatistics.from_state(data_stats, process.resolution)
    except ValueError as e:
        raise ValueError(f"{stats_source or source}: {e}") from e
    check_weights(config["unet"], weights, source, what)
    model = UNet(UNetConfig(**config["unet"]))
    model.load_state_dict(weights)
    output = config.get("model_output", "eps")
    try:
        model = eps_model(model.to(device).eval(), process, output)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    if output == "eps_residual" and process.data_stats is None:
        raise ValueError(f"{source}: an eps_residual network needs the run's data statistics, which it lacks")
    return process, model.eval()
