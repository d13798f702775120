"""JSON parsing with a depth limit, for every JSON file and value blurdiff reads.

``json.loads`` recurses once per nesting level: a hostile file of a few thousand ``[`` raises
``RecursionError``, which no caller treats as bad input, and a value nested just below the
interpreter's limit parses, then breaks whatever recurses over it next. Nothing blurdiff writes
nests more than a few levels, so anything deeper than :data:`MAX_DEPTH` is refused as malformed
JSON (a ``json.JSONDecodeError``, which every reader already turns into its own error).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_BYTES", "MAX_DEPTH", "JSONTooDeepError", "loads", "read_text"]

MAX_DEPTH = 100
#: The largest JSON file read (the largest the project writes, an export's config with its
#: spectral power at 1024 x 1024, is about 25 MiB): ``--config /dev/zero`` must end.
MAX_BYTES = 64 << 20


class JSONTooDeepError(json.JSONDecodeError):
    """JSON nested more than :data:`MAX_DEPTH` levels deep."""

    def __init__(self, doc: str | bytes):
        text = doc if isinstance(doc, str) else ""  # JSONDecodeError counts lines in a str only
        super().__init__(f"nested more than {MAX_DEPTH} levels deep", text, 0)
        self.args = (self.msg,)  # no "line 1 column 1": the position says nothing here


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, or ``JSONTooDeepError`` when it nests more than :data:`MAX_DEPTH`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JSONTooDeepError(text) from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise JSONTooDeepError(text)
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    # Iterative: a recursive walk would fail on the very values it is meant to catch.
    stack = [(value, 0)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth >= limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def read_text(path) -> str:
    """The text of the JSON file ``path``: a ValueError naming it when it holds more than
    :data:`MAX_BYTES` (a device such as ``/dev/zero`` never ends) or is not UTF-8."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"{path} holds more than {MAX_BYTES >> 20} MiB: not a JSON file of blurdiff's")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {e.start} is {data[e.start]:#04x}): not a JSON file"
        ) from None
