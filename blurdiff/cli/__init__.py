"""The ``blurdiff`` command: ``blurdiff data|train|sample|export|eval|fid|spectrum ...`` (also ``python -m blurdiff``).

Each command's options live beside its code (``add_arguments`` in the module that runs it);
this file only assembles them.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

import torch
from PIL import UnidentifiedImageError

from blurdiff.data import _first_line  # the one-line form of an error, as the data files report theirs
from blurdiff.images import UndecodableDataError
from blurdiff.inception import InceptionWeightsError
from blurdiff.output_folders import OutputExistsError
from blurdiff.run_folder import RunInUseError

# The commands in the order `blurdiff -h` lists them. Each is a module blurdiff.cli.<name> that
# parses its options (add_arguments, and HELP/DESCRIPTION for -h) and, in run, calls the library
# and prints what it returns.
COMMANDS = ("data", "train", "sample", "export", "figures", "eval", "fid", "spectrum")


def _add_command(sub, name: str) -> None:
    module = importlib.import_module(f"{__name__}.{name}")
    # A docstring shown as the description keeps its own line breaks (lists, file trees); a
    # one-paragraph description is wrapped to the terminal.
    description = module.DESCRIPTION
    raw = description is not None and "\n" in description
    p = sub.add_parser(
        name,
        help=module.HELP,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter,
    )
    module.add_arguments(p)
    p.set_defaults(handler=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blurdiff", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        _add_command(sub, name)
    return parser


#: The largest seed: seeds reach torch as signed 64-bit integers, some of them plus a step or rank.
MAX_SEED = 2**63 - 1


def seed_type(text: str) -> int:
    """The ``type`` of every ``--seed``: an integer from 0 to :data:`MAX_SEED`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63 - 1 ({MAX_SEED}), got {value}")
    return value


def add_checkpoint_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--run RUN`` and ``--ckpt FILE``: which checkpoint ``what`` (a verb: "is used") applies to."""
    parser.add_argument(
        "--run", metavar="RUN", default=None, help=f"run folder (its newest checkpoint {what} unless --ckpt)"
    )
    parser.add_argument(
        "--ckpt", metavar="FILE", default=None, help="checkpoint file (a path, or a file name inside RUN/checkpoints)"
    )


def add_setting_arguments(parser: argparse.ArgumentParser, sampling: bool = False) -> None:
    """``--set SECTION.FIELD=VALUE`` (repeatable) and ``--config FILE`` (blurdiff.settings)."""
    g = parser.add_argument_group(
        "process and network fields (blurdiff.settings)"
        + (": checked against the run's; a sampler section sets the sampler" if sampling else "")
    )
    g.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="SECTION.FIELD=VALUE",
        help="set one field, e.g. --set process.f_max=0.3 --set unet.model_channels=96 "
        + ("(--set sampler.steps=25 too); " if sampling else "(on --resume: must be the run's); ")
        + "values are JSON, or a bare string",
    )
    g.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help='a JSON file of sections, e.g. {"process": {"f_max": 0.3}, "unet": {"model_channels": 96}}; '
        "--set wins over it",
    )


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: its exit code, or 2 with a one-line error on stderr for bad input."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    # A path that is not UTF-8 (a valid Linux name) would make every print naming it a
    # UnicodeEncodeError in a UTF-8 locale: written escaped, as Python's own stderr does.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    return run_command(args.command, args.handler, args)


def run_command(command: str, handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``handler(args)``'s exit code, or 2 with ``blurdiff COMMAND: error: ...`` on stderr when it
    raised for bad input or a machine problem (see :func:`_user_error_message`)."""
    try:
        return int(handler(args) or 0)
    except Exception as e:  # noqa: BLE001 - re-raised below unless it is bad input
        message = _user_error_message(e)
        if message is None:
            raise  # a programming error: keep the traceback
        # Bad input or a machine problem: say what is wrong, without a traceback.
        print(f"blurdiff {command}: error: {message}", file=sys.stderr)
        return 2


# Errors of the file system that the user, not the code, has to fix (missing or misplaced files,
# permissions, a read-only disk ...); raised by the OS, or by blurdiff with its own message.
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_USER_ERRNOS = {errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP}
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _user_error_message(e: Exception) -> str | None:
    """The one-line message for an error caused by the input or the machine; ``None`` for the rest."""
    if isinstance(e, OutputExistsError):
        return e.hint("--" + e.option.replace("_", "-"))  # the library's own hint says overwrite=True
    if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
        where = f" writing {e.filename}" if e.filename else ""
        return f"no space left on the device{where} ({e.strerror}); free some space and run again"
    if isinstance(e, OSError) and e.errno == errno.EIO:
        where = f" on {e.filename}" if e.filename else ""
        return f"input/output error{where} ({e.strerror}): the disk is full or failing; free some space or check it"
    if isinstance(e, RuntimeError) and "unexpected pos" in str(e):
        # torch.save's zip writer when a write came up short: in practice, a full disk.
        return f"a file could not be written completely (disk full?): {_first_line(e)}; free some space and run again"
    if _is_out_of_memory(e):
        return (
            f"out of memory ({_first_line(e)}); use a smaller --batch-size (or a smaller network), "
            "or free memory, and run again"
        )
    if isinstance(e, UnidentifiedImageError):
        return _first_line(e)  # "cannot identify image file '<path>'"
    if isinstance(e, (UndecodableDataError, InceptionWeightsError, RunInUseError, ValueError)):
        return str(e)
    if isinstance(e, _USER_OS_ERRORS) or (isinstance(e, OSError) and e.errno in _USER_ERRNOS):
        return _describe_os_error(e)
    return None


def _is_out_of_memory(e: Exception) -> bool:
    """An allocation the device's memory could not satisfy (torch's CUDA or CPU allocator, Python's)."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    # The CPU allocator raises a plain RuntimeError: "DefaultCPUAllocator: can't allocate memory: ..."
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)


def _describe_os_error(e: OSError) -> str:
    if e.filename is None:
        return str(e)
    if e.filename2 is not None:
        return f"{e.strerror}: {e.filename} -> {e.filename2}"
    return f"{e.strerror}: {e.filename}"
