"""Resuming a training run: the run folder's checks, the checkpoint a run goes on from (one choice
for every rank), whether it is the same run, and the random streams and data position it brings back.

A checkpoint's ``rng`` holds the trainer's generator of t and noise (one stream, the same on every
rank), every rank's global torch RNG (dropout) and the device type they belong to; its ``data``
the loader's position (see :func:`blurdiff.data.infinite_loader`). Restored on the same device
type and number of processes, a resumed run ends bitwise where an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from blurdiff.checkpoint import (
    check_run_folder,
    check_writable,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    load_newest_readable,
    networks_of,
)
from blurdiff.distributed import broadcast_from_main, gather_from_ranks

log = logging.getLogger("blurdiff.train")

__all__ = [
    "checkpoint_to_resume",
    "newest_readable",
    "check_same_run",
    "config_diff",
    "rng_states",
    "restore_rng_states",
    "resume_batch",
]


def checkpoint_to_resume(run_dir: Path, resume: bool, rank: int = 0, world_size: int = 1) -> dict[str, Any] | None:
    """The checkpoint a run in ``run_dir`` goes on from, or None for a new run (a collective call
    when ``world_size > 1``).

    First the folder: not a file, not someone else's (``check_run_folder``), writable by rank 0;
    then a folder with checkpoints is refused unless ``resume``, and with ``resume`` the newest
    checkpoint that loads and fits the run is taken (older ones are tried past one that does not).
    """
    is_main = rank == 0
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} exists and is not a folder")
    check_run_folder(run_dir)  # someone else's config.json and metrics.jsonl are not ours to replace
    if is_main:  # the one rank that writes: a folder it cannot write fails now, not at the first save
        check_writable(run_dir)
    newest = latest_checkpoint(run_dir)
    if newest is None:
        if resume:
            log.info("--resume: no checkpoint in %s yet, starting a new run", run_dir)
        return None
    if not resume:
        raise ValueError(
            f"the run folder {run_dir} already has checkpoints (newest: {newest.name}); "
            f"pass --resume to continue that run, or choose another --out"
        )
    if world_size == 1:
        path, state = newest_readable(run_dir)
    else:
        # One choice for every rank: rank 0 picks (setting aside what does not load) and the
        # others load the file it names.
        picked: dict[str, Any] = {}

        def pick() -> str:
            picked["path"], picked["state"] = newest_readable(run_dir)
            return str(picked["path"])

        path = Path(broadcast_from_main(pick, rank))
        state = picked["state"] if is_main else load_checkpoint(path)
    log.info("resuming from %s", path)
    return state


def newest_readable(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``run_dir`` that loads and that a trainer can go on from, and its
    state; the ones tried before it are set aside (see ``blurdiff.checkpoint.load_newest_readable``)."""

    def fits_the_run(path: Path, state: dict[str, Any]) -> None:
        # What the trainer will load, tried first on networks without memory, so that a
        # checkpoint that does not fit is set aside like an unreadable one and an older one
        # is tried. The optimizer is the trainer's (Adam).
        model = networks_of(state, path)["model"]
        try:
            torch.optim.Adam(model.parameters()).load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
            raise ValueError(f"{path}: the optimizer state does not fit the network: {e}") from e
        if not isinstance(state["config"].get("train"), dict):
            raise ValueError(f"{path}: the checkpoint's config lacks the run's training options")

    found = load_newest_readable(run_dir, validate=fits_the_run)
    if found is None:
        raise ValueError(f"--resume: the checkpoints in {checkpoint_dir(run_dir)} vanished while resuming")
    return found


def check_same_run(saved: dict[str, Any], config: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume the run in ``run_dir`` (its checkpoint's ``config``: ``saved``) with another
    preset, process, network or network output than ``config``'s; warn when the batch size or seed
    changed (training goes on, with other batches)."""
    for key in ("preset", "process", "unet", "model_output"):
        diff = config_diff(saved.get(key, "eps" if key == "model_output" else None), config[key])
        if diff:
            raise ValueError(
                f"--resume: the run in {run_dir} was trained with a different {key} than "
                f"this command asks for ({diff}); use the run's own settings, or another --out"
            )
    saved_train = saved["train"]
    for key in ("batch_size", "seed"):
        if saved_train.get(key) != config["train"][key]:
            warnings.warn(
                f"--resume with {key} {config['train'][key]} (the run used {saved_train.get(key)}): "
                f"training goes on, but not with the batches the run would have seen",
                stacklevel=2,
            )


def config_diff(saved, wanted) -> str | None:
    """None when two plain-data configs agree (blind to tuple-vs-list), else what differs."""

    def plain(x):
        return json.loads(json.dumps(x, default=str))

    saved, wanted = plain(saved), plain(wanted)
    if saved == wanted:
        return None
    if isinstance(saved, dict) and isinstance(wanted, dict):
        keys = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        return ", ".join(f"{k}: run {saved.get(k)!r}, now {wanted.get(k)!r}" for k in keys)
    return f"run {saved!r}, now {wanted!r}"


def rng_states(generator: torch.Generator, device: torch.device, world_size: int) -> dict[str, Any]:
    """A checkpoint's ``rng``: ``generator`` (t and noise) and every rank's global RNG (dropout),
    gathered into every rank's copy (a collective call when ``world_size > 1``)."""
    mine = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return {
        "device_type": device.type,
        "train_generator": generator.get_state(),
        "ranks": gather_from_ranks(mine, world_size),
    }


def restore_rng_states(
    rng: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
    rank: int,
    world_size: int,
    seed: int,
    step: int,
) -> None:
    """Set ``generator`` and this rank's global RNG to a checkpoint's ``rng`` (see :func:`rng_states`)
    when it comes from the same device type and number of processes; else re-seed them from
    ``(seed, step)``, with a warning that the run is not bitwise the uninterrupted one."""
    same_layout = rng.get("device_type") == device.type and len(rng.get("ranks", [])) == world_size
    if same_layout:
        generator.set_state(rng["train_generator"])
        mine = rng["ranks"][rank]
        torch.set_rng_state(mine["torch"])
        if device.type == "cuda" and mine.get("cuda") is not None:
            torch.cuda.set_rng_state(mine["cuda"], device)
    else:
        warnings.warn(
            "--resume on another device type or number of processes: the random streams "
            "are re-seeded from (seed, step), so the run is not bitwise the uninterrupted one",
            stacklevel=2,
        )
        generator.manual_seed(seed + 1_000_003 * step)
        torch.manual_seed(seed + 1 + rank + 1_000_003 * step)


def resume_batch(
    data: dict[str, Any], step: int, num_images: int, batch_size: int, world_size: int, warn: bool = True
) -> int:
    """The batch of the data stream a run resumed at ``step`` goes on with, from a checkpoint's
    ``data``: where the run stopped when the data set, batch size and number of processes are the
    run's; else ``step`` (a re-cut stream: at least not its beginning again), with a warning
    (when ``warn``) if the data set changed size."""
    if data.get("num_images", num_images) != num_images:
        if warn:
            warnings.warn(
                f"--resume on a data set of {num_images} images (the run was trained on "
                f"{data['num_images']}): the data stream is re-cut, so the batches from here "
                "on are not the ones the run would have seen",
                stacklevel=2,
            )
        return step
    if data.get("world_size", 1) != world_size or data.get("batch_size") != batch_size:
        return step  # a re-cut data stream: at least do not restart at its beginning
    return int(data.get("start_batch", step))
