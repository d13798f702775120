"""Resuming a training run: the run folder's checks, the checkpoint a run goes on from (one choice
for every rank), whether it is the same run, and the random streams and data position it brings
back (:func:`rng_states`, :func:`resume_batch`): restored on the same device type and number of
processes, a resumed run ends bitwise where an uninterrupted run would."""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from blurdiff.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint, load_newest_readable, networks_of
from blurdiff.distributed import broadcast_from_main, gather_from_ranks
from blurdiff.health import TrainingHealth
from blurdiff.run_folder import check_run_folder, check_writable
from blurdiff.statistics import DataStatistics

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
    when ``world_size > 1``). The folder must not be a file nor someone else's, and be writable; one
    with checkpoints is refused unless ``resume``, which takes the newest that loads and fits."""
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
    found = load_newest_readable(run_dir, validate=check_resumable)
    if found is None:
        raise ValueError(f"--resume: the checkpoints in {checkpoint_dir(run_dir)} vanished while resuming")
    return found


def check_resumable(path: Path, state: dict[str, Any]) -> None:
    """ValueError naming ``path`` unless a trainer can go on from everything ``state`` holds (weights,
    Adam's state, the step of the file's name, random streams, data position, health monitor, data
    statistics): so that a checkpoint that fails is set aside like an unreadable one and an older
    one is tried (:func:`blurdiff.checkpoint.load_newest_readable`)."""
    model = networks_of(state, path)["model"]
    if not isinstance(state["config"].get("train"), dict):
        raise ValueError(f"{path}: the checkpoint's config lacks the run's training options")
    named = re.fullmatch(r"ckpt-(\d+)\.pt", path.name)
    if named and int(named.group(1)) != state["step"]:
        raise ValueError(f"{path}: it holds step {state['step']}, not the step of its name")
    try:
        _check_optimizer(state["optimizer"], list(model.parameters()))
        _check_rng(state.get("rng"))
        _check_data_position(state.get("data"))
        health = state.get("health") or {}
        if not isinstance(health, dict) or not isinstance(health.get("last_good"), (str, type(None))):
            raise ValueError(f"the health record is not an object with a last_good name: {health!r:.60}")
        TrainingHealth.from_state(health.get("monitor"))
        resolution = state["config"].get("process", {}).get("resolution")
        DataStatistics.from_state(
            state.get("data_stats"), (resolution,) * 2 if isinstance(resolution, int) else resolution
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as e:
        raise ValueError(f"{path}: {e}") from e


def _check_optimizer(saved: Any, params: list[torch.nn.Parameter]) -> None:
    try:
        torch.optim.Adam(params).load_state_dict(saved)  # the structure: groups, parameter ids
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise ValueError(f"the optimizer state does not fit the network: {e}") from e
    for group in saved["param_groups"]:
        betas = group.get("betas")
        pair = isinstance(betas, (tuple, list)) and len(betas) == 2
        if not (pair and all(_nonnegative(b) and b < 1 for b in betas)):
            raise ValueError(f"the optimizer's Adam betas must be two numbers in [0, 1), not {betas!r}")
        for key in ("lr", "eps", "weight_decay"):
            if not _nonnegative(group.get(key)):
                raise ValueError(
                    f"the optimizer's {key} must be a finite number of at least 0.0, not {group.get(key)!r}"
                )
    for index, moments in saved["state"].items():
        shape = params[index].shape
        for key in ("exp_avg", "exp_avg_sq"):
            t = moments.get(key)
            fits = isinstance(t, torch.Tensor) and t.shape == shape and t.is_floating_point()
            if not (fits and torch.isfinite(t).all()):
                got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"the optimizer state does not fit the network: parameter {index}'s {key} must be a finite "
                    f"float tensor of shape {list(shape)}, not {got}"
                )


def _nonnegative(value: Any) -> bool:
    """A finite int or float of at least 0 (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _check_rng(rng: Any) -> None:
    """A checkpoint's ``rng`` (see :func:`rng_states`): each state must be one torch takes back."""
    if rng is None:
        return  # older checkpoints: re-seeded from (seed, step), with a warning
    if not isinstance(rng, dict) or not isinstance(rng.get("device_type"), str):
        raise ValueError(f"the random states (rng) are not an object with a device_type: {rng!r:.60}")
    ranks = rng.get("ranks")
    if not isinstance(ranks, list) or not ranks or not all(isinstance(r, dict) for r in ranks):
        raise ValueError(f"rng.ranks must be a list of every rank's random states, not {ranks!r:.60}")
    states = [("rng.train_generator", rng.get("train_generator"))]
    states += [(f"rng.ranks[{i}].torch", r.get("torch")) for i, r in enumerate(ranks)]
    for name, value in states:
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
            raise ValueError(f"{name} must be a generator state (a uint8 tensor), not {type(value).__name__}")
        if name.endswith(".torch") or rng["device_type"] == "cpu":
            try:
                torch.Generator().set_state(value)
            except RuntimeError as e:
                raise ValueError(f"{name} is not a CPU generator state ({' '.join(str(e).split())})") from e


def _check_data_position(data: Any) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise ValueError(f"the data position is not an object: {data!r:.60}")
    for key, low in (("start_batch", 0), ("batch_size", 1), ("world_size", 1), ("num_images", 1)):
        value = data.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"data.{key} must be an integer of at least {low}, not {value!r}")


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

    saved, wanted = (json.loads(json.dumps(x, default=str)) for x in (saved, wanted))
    if saved == wanted:
        return None
    if isinstance(saved, dict) and isinstance(wanted, dict):
        keys = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        return ", ".join(f"{k}: run {saved.get(k)!r}, now {wanted.get(k)!r}" for k in keys)
    return f"run {saved!r}, now {wanted!r}"


def rng_states(generator: torch.Generator, device: torch.device, world_size: int) -> dict[str, Any]:
    """A checkpoint's ``rng``: ``generator`` (t and noise) and every rank's global RNG (dropout),
    gathered into every rank's copy (a collective call when ``world_size > 1``)."""
    mine = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
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
