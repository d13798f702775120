"""``blurdiff export``: a trained run's network in files any tool reads (README "Exported weights").

The ``blurdiff`` format's ``config.json`` (:func:`_write_blurdiff`) holds the data statistics as JSON,
whose float64 is its shortest round-tripping decimal: they come back bit for bit, and
:func:`load_export` rebuilds the pair with :func:`blurdiff.checkpoint.build_from_config`, the code of
``build_from_checkpoint``, so ``blurdiff sample --export DIR`` makes ``--run RUN``'s images bit for bit.

Each file is written atomically, the weights first: a folder with an export's ``config.json`` is
complete, and ``weights_sha256`` catches weights that do not belong to it (an ``--overwrite``
interrupted between the two renames). Only an empty folder or an earlier export (with
``--overwrite``) is written into. The other formats: :data:`FORMATS`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch  # called through the module: tests simulate a full disk by patching save_file
import torch

from blurdiff.atomic import atomic_path, file_sha256, remove_stale, safetensors_os_errors, write_text_atomic
from blurdiff.checkpoint import build_from_config, load_checkpoint, load_safetensors, networks_of, resolve_checkpoint
from blurdiff.diffusion import current_record
from blurdiff.output_folders import check_replaceable, new_output_folder
from blurdiff.safe_json import loads as json_loads
from blurdiff.statistics import DataStatistics

__all__ = ["FORMATS", "ExportResult", "export_info", "export_run", "is_export", "load_export", "read_export_config"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_NAME = "blurdiff-export"  # config.json's "format", and the safetensors header's
FORMAT_VERSION = 1
_OURS = (WEIGHTS_FILE, CONFIG_FILE)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote."""

    format: str
    out: Path
    files: tuple[Path, ...]  # every file written
    checkpoint: Path  # the source
    step: int
    ema: bool  # the EMA weights (False: the raw ones)


# ------------------------------------------------------------------------------------- writing
def export_run(
    *,
    run: str | os.PathLike | None = None,
    ckpt: str | os.PathLike | None = None,
    out: str | os.PathLike,
    ema: bool = True,
    overwrite: bool = False,
    format: str = "blurdiff",
) -> ExportResult:
    """Export the newest checkpoint of ``run`` (or ``ckpt``: a path, or a file name inside
    ``run``, as for ``blurdiff sample``) into the folder ``out``, as the module docstring
    describes: ``blurdiff export``, whose options these keywords are (``ema=False`` is
    ``--no-ema``).

    Refuses (FileExistsError) a folder that is neither absent, nor empty, nor an earlier export;
    an earlier export is replaced only with ``overwrite`` (else
    :class:`~blurdiff.output_folders.OutputExistsError`). ValueError for a checkpoint that does not
    load, whose weights do not fit its config or are not finite.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r} (known: {', '.join(FORMATS)})")
    path = resolve_checkpoint(run, ckpt)
    state = load_checkpoint(path)
    config = state.get("config")
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("process", "unet")):
        raise ValueError(f"{path}: the checkpoint's config lacks the process/unet description")
    which = "ema" if ema else "model"
    if not isinstance(state.get(which), dict) or not state[which]:
        raise ValueError(f"{path} holds no {which} weights" + (" (try --no-ema)" if ema else ""))
    networks_of(state, path, [which])  # weights that fit the config and are finite, or a ValueError naming the file
    try:  # before anything is written
        _stats_json(state.get("data_stats"), config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    files = FORMATS[format](state, path, Path(out), ema, overwrite)
    return ExportResult(format, Path(out), tuple(files), path, int(state["step"]), ema)


def _export_blurdiff(state: dict[str, Any], path: Path, out: Path, ema: bool, overwrite: bool) -> list[Path]:
    """The ``blurdiff`` format: ``out/model.safetensors`` and ``out/config.json``."""
    check_replaceable(
        str(out),
        overwrite,
        _is_ours,
        "an export (blurdiff export)",
        ours=is_export,
        not_ours=f"is not a blurdiff export (no {CONFIG_FILE} or {WEIGHTS_FILE} of an export)",
    )
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write_blurdiff(state, path, out, ema)
    except BaseException:
        if made:  # a failed write (a full disk) leaves no half-made export behind
            for name in _OURS:
                (out / name).unlink(missing_ok=True)
                remove_stale(out, name)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _write_blurdiff(state: dict[str, Any], path: Path, out: Path, ema: bool) -> list[Path]:
    for name in _OURS:
        remove_stale(out, name)
    which = "ema" if ema else "model"
    weights = {k: t.detach().to("cpu").contiguous() for k, t in state[which].items()}
    weights_path, config_path = out / WEIGHTS_FILE, out / CONFIG_FILE
    with atomic_path(weights_path, durable=True) as tmp, safetensors_os_errors(weights_path):
        safetensors.torch.save_file(weights, str(tmp), metadata={"format": FORMAT_NAME, "weights": which})
    config = state["config"]
    data_stats = state.get("data_stats")
    document = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "weights": which,
        "weights_sha256": file_sha256(weights_path),
        "preset": config.get("preset"),
        "process": config["process"],
        "unet": config["unet"],
        "model_output": config.get("model_output", "eps"),
        "checkpoint": path.name,
        "checkpoint_step": int(state["step"]),
        "checkpoint_sha256": file_sha256(path),
        "data_stats": _stats_json(data_stats, config),
    }
    write_text_atomic(config_path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    return [weights_path, config_path]


def _stats_json(state: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's data statistics (checked against the process's resolution) as JSON."""
    r = config["process"]["resolution"]
    stats = DataStatistics.from_state(state, (r, r) if isinstance(r, int) else tuple(r))
    return stats.to_json() if stats is not None else None


DIFFUSERS_NAMES = ("model_index.json", "unet", "scheduler")  # what save_pretrained writes


def _export_diffusers(state: dict[str, Any], path: Path, out: Path, ema: bool, overwrite: bool) -> list[Path]:
    """The ``diffusers`` format: ``BlurDiffusionPipeline.save_pretrained`` of the checkpoint
    (blurdiff/diffusers_pipeline.py; load it with ``BlurDiffusionPipeline.from_pretrained(out)``).
    save_pretrained writes many files in place, so the folder is built beside ``out`` and renamed
    into place whole (the data commands' folders: blurdiff.output_folders), marked as blurdiff's."""
    try:
        from blurdiff.diffusers_pipeline import BlurDiffusionPipeline
    except ImportError as e:  # the optional extra is not installed: say how to get it
        raise ValueError(f"--format diffusers: {e}") from e
    check_replaceable(str(out), overwrite, lambda name: name in DIFFUSERS_NAMES, "a diffusers export")
    pipe = BlurDiffusionPipeline.from_checkpoint(state, use_ema=ema)
    with new_output_folder(str(out), "diffusers-export") as tmp, safetensors_os_errors(out):
        pipe.save_pretrained(tmp, safe_serialization=True)
    return sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


#: The export formats: name -> writer(state, checkpoint path, out, ema, overwrite) -> files
#: written. Each writer checks its own output folder; ``blurdiff export --format`` offers every key.
FORMATS: dict[str, Callable[[dict[str, Any], Path, Path, bool, bool], list[Path]]] = {
    "blurdiff": _export_blurdiff,
    "diffusers": _export_diffusers,
}


def _is_ours(name: str) -> bool:
    """The export's files, and atomic_path's temporaries of them (an interrupted export)."""
    return name in _OURS or any(name.startswith(f".{ours}.tmp-") for ours in _OURS)


def is_export(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an export of this module: a ``config.json`` that says so, or
    (an export interrupted before its config was written) a ``model.safetensors`` whose header does."""
    folder = Path(folder)
    try:
        if json_loads((folder / CONFIG_FILE).read_text()).get("format") == FORMAT_NAME:
            return True
    except (OSError, ValueError, AttributeError):  # absent, unreadable, not JSON, not an object
        pass
    try:
        with safetensors.safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT_NAME
    except Exception:  # noqa: BLE001 - absent or not a safetensors file: not ours
        return False


# ------------------------------------------------------------------------------------- loading
_REQUIRED = ("weights", "weights_sha256", "process", "unet", "model_output", "checkpoint_step", "checkpoint_sha256")


def read_export_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``folder/config.json``, checked to be an export's (ValueError naming the file otherwise).

    FileNotFoundError when ``folder`` does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder {folder} does not exist")
    path = folder / CONFIG_FILE
    if not path.is_file():
        if (folder / DIFFUSERS_NAMES[0]).is_file():
            raise ValueError(
                f"{folder} is a diffusers export (blurdiff export --format diffusers), not a blurdiff one: load it "
                f"with blurdiff.diffusers_pipeline.BlurDiffusionPipeline.from_pretrained"
            )
        raise ValueError(f"{path} is missing: {folder} is not a blurdiff export (made by blurdiff export)")
    try:
        config = json_loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); export the run again") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not the config of a blurdiff export (its format is not {FORMAT_NAME!r})")
    if not isinstance(config.get("format_version"), int) or config["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{path}: export format version {config.get('format_version')!r}; this blurdiff reads up to "
            f"{FORMAT_VERSION} (a newer blurdiff wrote it?)"
        )
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: a damaged export; export the run again")
    if config["weights"] not in ("ema", "model"):
        raise ValueError(f"{path}: weights must be 'ema' or 'model', not {config['weights']!r}")
    if not isinstance(config["process"], dict) or not isinstance(config["unet"], dict):
        raise ValueError(f"{path}: process and unet must be objects (the BlurDiffusion and UNetConfig fields)")
    config["process"] = current_record(config["process"])
    return config


def load_export(
    folder: str | os.PathLike, device: str | torch.device = "cpu", backend: str = "auto"
) -> tuple[Any, torch.nn.Module]:
    """``(process, model)`` of an export: what :func:`~blurdiff.checkpoint.build_from_checkpoint`
    builds from its source checkpoint (the data statistics on ``process.data_stats``, the
    :class:`~blurdiff.diffusion.ReferenceResidual` wrapper for ``eps_residual``), in eval mode.

    ValueError naming the file for an export that is incomplete or damaged: a missing file, a
    config that is not an export's, weights that are not the ones the config names (their
    SHA-256), do not fit its network (wrong keys or shapes) or are not finite.
    """
    folder = Path(folder)
    config = read_export_config(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    weights = _read_weights(weights_path, config["weights_sha256"])
    try:
        return build_from_config(
            config, weights, config.get("data_stats"), device, backend, weights_path, stats_source=config_path
        )
    except (TypeError, KeyError, ValueError) as e:  # a process field, the data statistics
        message = str(e) if str(folder) in str(e) else f"{config_path}: {e}"
        raise ValueError(message) from e


def _read_weights(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"{path} is missing: the export is incomplete; export the run again")
    if file_sha256(path) != sha256:
        raise ValueError(
            f"{path} does not match the weights_sha256 of its {CONFIG_FILE} (damaged, replaced, or an "
            f"interrupted --overwrite); export the run again"
        )
    return load_safetensors(path)


def export_info(folder: str | os.PathLike) -> dict[str, Any]:
    """What ``blurdiff sample`` records of an export's source: the checkpoint's step and SHA-256,
    the preset and which weights (``ema``: bool), read from its config.json."""
    config = read_export_config(folder)
    step = config["checkpoint_step"]
    if not isinstance(step, int) or isinstance(step, bool):
        raise ValueError(f"{Path(folder) / CONFIG_FILE}: checkpoint_step must be an int, not {step!r}")
    return {
        "checkpoint_step": step,
        "checkpoint_sha256": config["checkpoint_sha256"],
        "preset": config.get("preset"),
        "ema": config["weights"] == "ema",
    }
