"""Checkpoints: written atomically, loaded without running code, and turned back into models.

A checkpoint is a ``torch.save`` dict with at least ``step``, ``model``, ``ema``, ``optimizer``
and ``config``; ``config`` holds plain data only::

    {"preset": "toy",
     "process": {...BlurDiffusion keyword arguments...},
     "unet": {...dataclasses.asdict(UNetConfig)...},
     "train": {...the run's training options...}}

Everything in it loads with ``torch.load(weights_only=True)``: opening a file someone sent you
must not run code. Files are ``RUN/checkpoints/ckpt-{step:08d}.pt``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch

from blurdiff.atomic import atomic_path

if TYPE_CHECKING:
    from blurdiff.diffusion import BlurDiffusion

REQUIRED_KEYS = ("step", "model", "ema", "optimizer", "config")
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt-{step:08d}.pt"


def save_checkpoint(state: Dict[str, Any], path) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file, flushed and fsynced, then renamed.

    A crash at any moment leaves either the old file or the complete new one, never a torn one.
    """
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"a checkpoint needs the keys {REQUIRED_KEYS}; missing {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
    return path


def list_checkpoints(run_dir) -> List[Path]:
    """The run's checkpoints, oldest first (by step)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Optional[Path]:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(run_dir, keep: int, protect=()) -> None:
    """Delete all but the newest ``keep`` checkpoints, and but those named in ``protect``."""
    for p in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if p.name not in protect:
            p.unlink(missing_ok=True)


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
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
        raise ValueError(f"{path} is not a loadable blurdiff checkpoint: {e}") from e
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise ValueError(f"{path} is not a blurdiff checkpoint (needs the keys {REQUIRED_KEYS})")
    return state


def load_newest_readable(run_dir) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest checkpoint of ``run_dir`` that loads, with its path; None if the run has none.

    Newer ones whose content does not load (damaged on disk, not a blurdiff checkpoint) are
    skipped with a warning and, once an older one has loaded, renamed to ``NAME.unreadable``:
    kept for inspection, out of the way of pruning and of the next resume. Raises ValueError
    when checkpoints exist and none loads (then nothing is renamed); read errors (OSError)
    propagate without touching anything.
    """
    bad = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path)
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
            warnings.warn(f"skipping {skipped.name}: {reason} (renamed to {aside.name}); "
                          f"resuming from {path.name}")
        return path, state
    if bad:
        raise ValueError(f"no checkpoint in {checkpoint_dir(run_dir)} loads (tried "
                         f"{', '.join(p.name for p, _ in bad)}; newest: {bad[0][1]})")
    return None


def resolve_checkpoint(run_dir=None, ckpt=None) -> Path:
    """``ckpt`` when given, else the newest checkpoint of ``run_dir``."""
    if ckpt is not None:
        return Path(ckpt)
    if run_dir is None:
        raise ValueError("give a run folder or a checkpoint file")
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir(run_dir)} (has the run saved one yet?)")
    return latest


def build_from_checkpoint(state: Dict[str, Any], use_ema: bool = True, device="cpu", backend: str = "auto"
                          ) -> Tuple["BlurDiffusion", torch.nn.Module]:
    """The process (with the run's data statistics, when the checkpoint has them) and the network
    (EMA weights by default) a checkpoint describes, in eval mode."""
    from blurdiff.diffusion import BlurDiffusion
    from blurdiff.statistics import DataStatistics
    from blurdiff.unet import UNet, UNetConfig

    config = state["config"]
    process = BlurDiffusion(**config["process"], backend=backend)
    process.data_stats = DataStatistics.from_state(state.get("data_stats"), process.resolution)
    model = UNet(UNetConfig(**config["unet"]))
    model.load_state_dict(state["ema" if use_ema else "model"])
    return process, model.to(device).eval()
