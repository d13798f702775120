"""A training run's ``metrics.jsonl`` (rank 0 writes it): a line per logging window (step, mean
loss, lr, mean grad norm, images/s), the health monitor's events (a loss spike, the recovery from
it) and the run's end (the health verdict). Resuming cuts it back to the step the run goes on from."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from blurdiff.atomic import write_text_atomic
from blurdiff.health import HealthEvent
from blurdiff.safe_json import loads as json_loads

log = logging.getLogger("blurdiff.train")

__all__ = ["MetricsLog", "Window"]


class Window:
    """Running sums of one logging window."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.steps = 0
        self.loss_sum = self.grad_norm_sum = 0.0

    def add(self, loss: float, grad_norm: float) -> None:
        self.steps += 1
        self.loss_sum += loss
        self.grad_norm_sum += grad_norm

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    @property
    def mean_grad_norm(self) -> float:
        return self.grad_norm_sum / max(self.steps, 1)


class MetricsLog:
    """The lines of ``path``; with ``enabled`` false (the ranks other than 0) every call does nothing."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def truncate(self, step: int) -> None:
        """Keep the lines up to ``step`` (a resumed run rewrites what came after); a torn last line
        (a crash mid-write) goes too."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json_loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
        write_text_atomic(self.path, "".join(kept))

    def window(self, step: int, window: Window, lr: float, global_batch: int) -> None:
        """The line of a logging window that ends at ``step`` (none for an empty window)."""
        if window.steps == 0:
            return
        elapsed = time.perf_counter() - window.t0
        record = {
            "step": step,
            "loss": window.mean_loss,
            "lr": lr,
            # fp16: the GradScaler skips steps whose gradient overflowed (inf); JSON has no inf.
            "grad_norm": window.mean_grad_norm if math.isfinite(window.mean_grad_norm) else None,
            "images_per_s": window.steps * global_batch / elapsed if elapsed > 0 else None,
            "time": time.time(),
        }
        self.append(record)

    def health_event(self, event: HealthEvent, last_good: str | None) -> None:
        """A loss spike (logged as a warning that names ``last_good``, the last checkpoint saved
        before it) or the recovery from one (logged as info), and its line."""
        if not self.enabled:
            return
        if event.kind == "spike":
            kept = f"; {last_good} (the last checkpoint saved before it) is kept from pruning" if last_good else ""
            log.warning(
                "%s%s. If it does not recover, lower --lr or raise --warmup-steps and start again from that checkpoint",
                event.message,
                kept,
            )
        else:
            log.info("recovered from the loss spike: %s", event.message)
        self.append(
            {
                "step": event.step,
                "event": event.kind,
                "message": event.message,
                "last_good_checkpoint": last_good,
                "time": time.time(),
            }
        )

    def end(self, step: int, healthy: bool, text: str) -> None:
        """The run's last line: its health verdict."""
        self.append({"step": step, "event": "end", "healthy": healthy, "message": text, "time": time.time()})
