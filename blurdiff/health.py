"""Is a training run healthy? Loss spikes and divergence, noticed while they happen.

:class:`TrainingHealth` takes the loss and gradient norm of every step, closes windows of
``window`` steps, and compares each window's means with the median of the previous healthy
windows. A window whose mean loss is ``loss_factor`` times that reference, or whose mean gradient
norm is ``grad_factor`` times it, starts a *spike*; the run counts as recovered once a window's
loss is back within ``recover_factor`` of the reference the spike was measured against. Its state
is plain data, saved in checkpoints, so a resumed run keeps its history.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["HealthEvent", "TrainingHealth"]


@dataclass
class HealthEvent:
    """What a closed window changed: ``kind`` is "spike" or "recovered"."""

    kind: str
    step: int
    message: str


@dataclass
class TrainingHealth:
    window: int = 100
    history: int = 5  # previous healthy windows in the reference (their median)
    min_history: int = 3  # windows needed before anything is judged
    loss_factor: float = 1.3
    grad_factor: float = 4.0
    recover_factor: float = 1.1
    # State (plain data: checkpoints keep it).
    windows: list[list[float]] = field(default_factory=list)  # [end step, mean loss, mean grad norm, healthy]
    spikes: list[dict[str, Any]] = field(default_factory=list)
    in_spike: dict[str, Any] | None = None
    _steps: int = 0
    _loss_sum: float = 0.0
    _grad_sum: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, **defaults) -> TrainingHealth:
        """The monitor a checkpoint saved (:meth:`state_dict`); a ValueError for one whose fields are
        not of their kinds (it would fail at the first closed window, or judge wrongly)."""
        if not state:
            return cls(**defaults)
        if not isinstance(state, dict):
            raise ValueError(f"the health monitor's state is not an object: {state!r:.60}")
        known = {k: v for k, v in state.items() if k in cls.__dataclass_fields__}
        health = cls(**known)
        ok = all(_count(getattr(health, k), 1) for k in ("window", "history", "min_history")) and _count(health._steps)
        ok = ok and all(_number(getattr(health, k)) for k in ("loss_factor", "grad_factor", "recover_factor"))
        ok = ok and _number(health._loss_sum) and _number(health._grad_sum)
        ok = ok and isinstance(health.windows, list) and all(_window(w) for w in health.windows)
        ok = ok and isinstance(health.spikes, list) and all(_spike(sp) for sp in health.spikes)
        if not (ok and (health.in_spike is None or _spike(health.in_spike))):
            raise ValueError("the health monitor's state is malformed (a field is not of its kind)")
        return health

    # ------------------------------------------------------------------ updates
    def update(self, step: int, loss: float, grad_norm: float) -> HealthEvent | None:
        """Record one step; when it closes a window, judge the window (an event or None)."""
        self._steps += 1
        self._loss_sum += loss
        # fp16 runs skip steps with inf gradients (the GradScaler's business): not a spike.
        self._grad_sum += grad_norm if math.isfinite(grad_norm) else 0.0
        if self._steps < self.window:
            return None
        mean_loss, mean_grad = self._loss_sum / self._steps, self._grad_sum / self._steps
        self._steps, self._loss_sum, self._grad_sum = 0, 0.0, 0.0
        event = self._judge(step, mean_loss, mean_grad)
        del self.windows[:-1000]  # bounded: the reference needs only the last few healthy ones
        return event

    def _reference(self) -> tuple | None:
        healthy = [w for w in self.windows if w[3]][-self.history :]
        if len(healthy) < self.min_history:
            return None
        return statistics.median(w[1] for w in healthy), statistics.median(w[2] for w in healthy)

    def _judge(self, step: int, loss: float, grad: float) -> HealthEvent | None:
        event = None
        if self.in_spike is not None:
            ref_loss = self.in_spike["reference_loss"]
            if loss <= self.recover_factor * ref_loss:
                self.in_spike["recovered_at"] = step
                self.spikes.append(self.in_spike)
                self.in_spike = None
                msg = f"loss back to {loss:.4g} (reference {ref_loss:.4g}) at step {step}"
                event = HealthEvent("recovered", step, msg)
        elif (ref := self._reference()) is not None:
            ref_loss, ref_grad = ref
            why = []
            if loss > self.loss_factor * ref_loss:
                why.append(f"mean loss {loss:.4g} is {loss / ref_loss:.2f}x the {ref_loss:.4g} of the windows before")
            if ref_grad > 0 and grad > self.grad_factor * ref_grad:
                why.append(f"mean gradient norm {grad:.3g} is {grad / ref_grad:.1f}x the {ref_grad:.3g} before")
            if why:
                start = step - self.window + 1
                self.in_spike = {"start": start, "step": step, "loss": loss, "grad_norm": grad}
                self.in_spike.update(reference_loss=ref_loss, reference_grad_norm=ref_grad)
                event = HealthEvent("spike", step, f"loss spike in steps {start}-{step}: " + "; ".join(why))
        self.windows.append([step, loss, grad, self.in_spike is None])
        return event

    # ------------------------------------------------------------------ verdict
    @property
    def healthy(self) -> bool:
        """Not in an unrecovered spike."""
        return self.in_spike is None

    def summary(self) -> str:
        """One line: healthy or not, and why."""
        if not self.windows:
            return f"too short to judge (fewer than {self.window} steps)"
        last = self.windows[-1]
        best = min(w[1] for w in self.windows)
        past = (
            f"; {len(self.spikes)} earlier spike(s), recovered (first at step {self.spikes[0]['step']})"
            if self.spikes
            else ""
        )
        if self.in_spike is not None:
            s = self.in_spike
            return (
                f"loss spike since step {s['start']} not recovered: last window's loss {last[1]:.4g} against "
                f"{s['reference_loss']:.4g} before it (gradient norm {last[2]:.3g} against "
                f"{s['reference_grad_norm']:.3g}){past}"
            )
        return (
            f"final loss {last[1]:.4g} (best window {best:.4g}), gradient norm {last[2]:.3g}, "
            f"no unrecovered spike{past}"
        )


def _count(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _window(w) -> bool:  # [end step, mean loss, mean grad norm, healthy]
    return isinstance(w, list) and len(w) == 4 and all(_number(v) for v in w[:3]) and isinstance(w[3], bool)


def _spike(spike) -> bool:
    return isinstance(spike, dict) and _number(spike.get("reference_loss")) and _number(spike.get("step"))
