"""Training health (blurdiff/health.py and the trainer's use of it): loss spikes are noticed,
recorded, reported in the run's last line, and the last good checkpoint survives pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blurdiff.checkpoint import list_checkpoints, load_checkpoint
from blurdiff.cli.train import run as main
from blurdiff.health import TrainingHealth
from blurdiff.train import train
from blurdiff.train_options import TrainOptions

RES = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops (see conftest.one_torch_thread)


def _feed(h, losses, grads=None, start=0):
    events = []
    for n, loss in enumerate(losses):
        e = h.update(start + n + 1, loss, 0.2 if grads is None else grads[n])
        if e is not None:
            events.append(e)
    return events


def test_spike_and_recovery_are_found():
    h = TrainingHealth(window=10)
    assert _feed(h, [0.10] * 40) == [] and h.healthy
    # Noise of ±10 % around the reference is not a spike.
    assert _feed(h, [0.09, 0.11] * 20, start=40) == [] and h.healthy
    events = _feed(h, [0.20] * 10, start=80)
    assert [e.kind for e in events] == ["spike"] and "steps 81-90" in events[0].message and not h.healthy
    assert "not recovered" in h.summary()
    assert _feed(h, [0.18] * 10, start=90) == []  # still high: no new event
    events = _feed(h, [0.105] * 10, start=100)
    assert [e.kind for e in events] == ["recovered"] and h.healthy
    assert "1 earlier spike(s), recovered" in h.summary()


def test_gradient_norm_spike_and_state_round_trip():
    h = TrainingHealth(window=5)
    _feed(h, [0.1] * 20)
    events = _feed(h, [0.1] * 5, grads=[2.0] * 5, start=20)
    assert events and "gradient norm" in events[0].message
    again = TrainingHealth.from_state(json.loads(json.dumps(h.state_dict())))
    assert again.state_dict() == h.state_dict() and not again.healthy


def test_nothing_is_judged_before_enough_history():
    h = TrainingHealth(window=5)
    assert _feed(h, [1.0] * 5 + [0.5] * 5 + [3.0] * 5) == []  # a falling then jumping start: 3 windows
    assert "too short" in TrainingHealth(window=5).summary()


@pytest.fixture(scope="module")
def toy_lmdb(toy_lmdb_of) -> Path:
    return toy_lmdb_of(32, RES)


def test_a_bad_learning_rate_is_detected_recorded_and_reported(toy_lmdb, tmp_path, capsys):
    """40 sane steps, then the run is resumed with a learning rate 100x too high."""
    base = dict(
        data=str(toy_lmdb),
        preset="toy",
        out=str(tmp_path),
        batch_size=4,
        resolution=RES,
        warmup_steps=0,
        lr=5e-4,
        ckpt_every=10,
        keep=2,
        sample_every=0,
        log_every=5,
        health_window=5,
        progress=False,
        device="cpu",
        final_check=False,
    )
    first = train(TrainOptions(max_steps=40, **base))
    assert first.verdict[0], first.verdict
    resumed = train(TrainOptions(**dict(base, max_steps=60, resume=True, lr=5e-2)))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = [m for m in lines if m.get("event") == "spike"]
    assert events and events[0]["step"] > 40, lines
    # The event names the checkpoint kept from pruning: the last one saved before the spike.
    kept = events[0]["last_good_checkpoint"]
    assert kept is not None and int(kept[5:13]) <= events[0]["step"] - 5
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert kept in names and len(names) == 3, names  # keep=2, plus the protected one
    assert load_checkpoint(tmp_path / "checkpoints" / names[-1])["health"]["last_good"] == kept
    healthy, text = resumed.verdict
    assert not healthy and "not recovered" in text and kept in text
    assert lines[-1]["event"] == "end" and lines[-1]["healthy"] is False


def test_cli_last_line_says_healthy(toy_lmdb, tmp_path, capsys):
    import argparse

    from blurdiff.cli.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(toy_lmdb),
            "--preset",
            "toy",
            "--out",
            str(tmp_path),
            "--max-steps",
            "30",
            "--batch-size",
            "4",
            "--resolution",
            str(RES),
            "--warmup-steps",
            "5",
            "--health-window",
            "5",
            "--no-final-check",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("run healthy: final loss"), last
