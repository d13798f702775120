"""``--set SECTION.FIELD=VALUE`` and ``--config FILE``: process, network and sampler fields set
from the command line, parsed and checked against the fields' annotated types (docs/design.md §2
"Settings"; README "Command line").
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

from blurdiff.diffusion import ProcessConfig
from blurdiff.safe_json import JSONTooDeepError
from blurdiff.safe_json import loads as json_loads
from blurdiff.safe_json import read_text as read_json_text
from blurdiff.unet import UNetConfig

__all__ = ["SECTIONS", "Settings", "check_against_run", "field_types", "parse_settings"]

#: The sections a key may name; ``sampler`` only in ``blurdiff sample`` (and, ignored, in train's config files).
SECTIONS = ("process", "unet", "sampler")

Settings = dict[str, dict[str, Any]]


def field_types(section: str) -> dict[str, Any]:
    """The settable fields of ``section`` and their types (from the code's own annotations, so a
    new field is settable without touching this module)."""
    configs = {"process": ProcessConfig, "unet": UNetConfig}
    if section in configs:
        hints = typing.get_type_hints(configs[section])
        return {f.name: hints[f.name] for f in dataclasses.fields(configs[section])}
    if section == "sampler":
        return {"name": str, "steps": int, "spacing": str}
    raise ValueError(f"unknown settings section {section!r}; valid sections: {', '.join(SECTIONS)}")


def parse_settings(
    assignments: list[str] | None = None, config: str | Path | None = None, sections=("process", "unet")
) -> Settings:
    """``{section: {field: value}}`` from a ``--config`` JSON file and ``--set`` assignments (which
    win), checked against the fields of ``sections``. A config file's sections outside ``sections``
    but in :data:`SECTIONS` are dropped (a sampler section in ``blurdiff train``)."""
    out: Settings = {s: {} for s in sections}
    if config is not None:
        for section, fields in _read_config(Path(config)).items():
            if section not in sections:
                continue
            for name, value in fields.items():
                out[section][name] = _checked(section, name, value, sections, f"--config {config}")
    for text in assignments or ():
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {text!r}: write SECTION.FIELD=VALUE, e.g. --set process.f_max=0.3")
        section, dot, name = key.strip().partition(".")
        if not dot:
            raise ValueError(f"--set {text!r}: the key needs a section ({', '.join(sections)}), e.g. process.{key}")
        out.setdefault(section, {})
        try:
            value = json_loads(raw.strip())
        except JSONTooDeepError as e:
            raise ValueError(f"--set {section}.{name}: the value is {e}") from None
        except json.JSONDecodeError:
            value = raw.strip()  # a bare word: a string
        out[section][name] = _checked(section, name, value, sections, "--set")
    return out


def check_against_run(settings: Settings, run_config: dict[str, Any], source: str) -> None:
    """Refuse (ValueError) ``process``/``unet`` settings that differ from the run's ``config`` (a
    checkpoint's): sampling a network under another process than its own gives wrong samples."""
    for section in ("process", "unet"):
        saved = run_config.get(section, {})
        for name, value in settings.get(section, {}).items():
            have = saved.get(name)
            if section == "process" and name not in saved:
                # A configuration records no family fields for the paper's process: their defaults.
                have = ProcessConfig.__dataclass_fields__[name].default
            if section == "process" and name == "resolution" and isinstance(value, int):
                value = (value, value)  # the config records (H, W)
            if not _same(have, value):
                raise ValueError(
                    f"{section}.{name}={json.dumps(value)} differs from the run's {json.dumps(have)} "
                    f"({source}): a network samples correctly only under the process and network it was trained "
                    f"with; train a run with --set {section}.{name}=... instead"
                )


def _read_config(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json_loads(read_json_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"--config: no such file: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path}: not valid JSON ({e})") from None
    except ValueError as e:  # too large, not UTF-8
        raise ValueError(f"--config {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f'--config {path}: expected an object of sections, e.g. {{"process": {{"f_max": 0.3}}}}')
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"--config {path}: unknown section(s) {unknown}; valid sections: {', '.join(SECTIONS)}")
    return data


def _checked(section: str, name: str, value: Any, sections, where: str) -> Any:
    if section not in sections:
        raise ValueError(
            f"{where}: unknown section {section!r} in {section}.{name}; valid sections: {', '.join(sections)}"
        )
    types_ = field_types(section)
    if name not in types_:
        close = difflib.get_close_matches(name, types_, n=1)
        hint = f" (did you mean {section}.{close[0]}?)" if close else ""
        valid = ", ".join(f"{section}.{n}" for n in sorted(types_))
        raise ValueError(f"{where}: unknown key {section}.{name}{hint}; valid {section} keys: {valid}")
    try:
        return _coerce(value, types_[name])
    except TypeError:
        raise ValueError(
            f"{where}: {section}.{name} must be {_describe(types_[name])}, got {json.dumps(value)}"
        ) from None


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (TypeError when it is not one): ints widen to floats, lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option)
            except TypeError:
                pass
        raise TypeError
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(args) != len(value):
            raise TypeError
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    # bool is an int to Python, not to a config
    if hint not in (bool, int, float, str) or isinstance(value, bool) != (hint is bool):
        raise TypeError
    if not isinstance(value, (int, float) if hint is float else hint):
        raise TypeError
    return float(value) if hint is float else value


_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers")}
_NAMES[str] = ("a string", "strings")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return "a list of " + _NAMES.get(args[0], ("", str(args[0])))[1]
        if len(set(args)) == 1:
            return f"a list of {len(args)} " + _NAMES.get(args[0], ("", str(args[0])))[1]
        return f"a list [{', '.join(_describe(a) for a in args)}]"
    return _NAMES.get(hint, (str(hint),))[0]


def _same(a: Any, b: Any) -> bool:
    """Equal as plain data, floats to 12 digits: a preset's ``(0.15 / 0.4) ** 2`` is 0.140625 on the command line."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        both_numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
        return both_numbers and math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b
