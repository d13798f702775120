"""A small progress line for long loops (sampling steps, training steps, images)."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "sampling", unit="step") as bar: bar.update(n, loss=...)``.

    Redraws one line at most every ``min_interval`` seconds on stderr. When stderr is not a
    terminal (a log file, CI), it writes a plain line at most every 30 s instead, so logs stay
    readable. ``enabled=False`` makes it silent.
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        initial: int = 0,
        min_interval: float = 0.5,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled
        self.n = initial
        self._start_n = initial
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._drawn = None  # (n, postfix) of the last line written
        self._tty = sys.stderr.isatty()
        self._min_interval = min_interval if self._tty else max(min_interval, 30.0)
        self.postfix = ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._t0
        return (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = " ".join(f"{k}={_fmt(v)}" for k, v in postfix.items())
        now = time.perf_counter()
        finished = self.n == self.total and (self._drawn is None or self._drawn[0] != self.n)
        if self.enabled and (now - self._last >= self._min_interval or finished):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        self._drawn = (self.n, self.postfix)
        rate = self.rate
        if self.total:
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            head = f"{self.n}/{self.total} [{100 * self.n / self.total:5.1f}%] eta {_hms(eta)}"
        else:
            head = f"{self.n}"
        line = f"{self.desc}: {head} {rate:.2f} {self.unit}/s {self.postfix}"
        sys.stderr.write("\r" + line.ljust(100)[:160] if self._tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            if self._tty or self._drawn != (self.n, self.postfix):  # a log gets the last line once
                self._draw()
            if self._tty:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _hms(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"
