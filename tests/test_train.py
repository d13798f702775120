"""The trainer: bitwise resume, atomic checkpoints, pruning, NaN stops, refusals, metrics, sample
grids, DDP (gloo, two processes), real-format LSUN lmdbs and image folders, and the CLI.

Everything runs the `toy` preset at 16x16 with batches of 4 on a 32-image toy lmdb, so the file
takes well under a minute and a half on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from helpers import cannot_compile, flip_bytes_inside
from PIL import Image

import blurdiff_ops
from blurdiff.checkpoint import (
    build_from_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from blurdiff.cli.train import add_arguments
from blurdiff.cli.train import run as main
from blurdiff.presets import get_preset
from blurdiff.run_folder import RUN_LOCK, RunInUseError, run_lock
from blurdiff.toy_data import make_toy_lmdb, toy_image
from blurdiff.train import NonFiniteLossError, Trainer, build_parts, build_trainer, plan_run, train
from blurdiff.train_options import TrainOptions

RES = 16
BATCH = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops (see conftest.one_torch_thread)


@pytest.fixture(scope="module")
def toy_lmdb(toy_lmdb_of) -> Path:
    return toy_lmdb_of(32, RES)


def cli_args(data, out, max_steps: int, *extra: str) -> list[str]:
    """The arguments of `blurdiff train` for a short CPU run of the toy preset (``extra`` appended)."""
    return [
        *("--data", str(data), "--preset", "toy", "--out", str(out), "--max-steps", str(max_steps)),
        *("--no-progress", "--device", "cpu", *extra),
    ]


def opts(data, out, **kw) -> TrainOptions:
    base = dict(
        data=str(data),
        preset="toy",
        out=str(out),
        max_steps=4,
        batch_size=BATCH,
        resolution=RES,
        ckpt_every=0,
        sample_every=0,
        log_every=1,
        progress=False,
        device="cpu",
    )
    base.update(kw)
    return TrainOptions(**base)


def run(options: TrainOptions) -> Trainer:
    trainer = build_trainer(options)
    trainer.run_loop()
    trainer.close()
    return trainer


def assert_same(a, b, path="state"):
    """Bitwise equality of nested dicts / lists / tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs (max |diff| {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {a.keys()} vs {b.keys()}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def metrics(run_dir, events: bool = False) -> list[dict]:
    """The lines of metrics.jsonl: the per-window metrics, or (``events``) the health events."""
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if ("event" in m) == events]


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# resume, checkpoints
# --------------------------------------------------------------------------------------------


def test_resume_is_bitwise_identical_to_a_straight_run(toy_lmdb, tmp_path):
    # Dropout on, so the global RNG (dropout masks) has to be restored too, not just t and noise.
    kw = dict(unet_overrides={"dropout": 0.1}, ckpt_every=3, max_steps=6)
    run(opts(toy_lmdb, tmp_path / "straight", **kw))
    run(opts(toy_lmdb, tmp_path / "halves", **dict(kw, max_steps=3)))
    # Resume with only the required options: batch size, resolution, overrides come from the run.
    resumed = run(
        opts(
            toy_lmdb,
            tmp_path / "halves",
            resume=True,
            max_steps=6,
            ckpt_every=3,
            batch_size=None,
            resolution=None,
            unet_overrides=None,
        )
    )
    assert resumed.batch_size == BATCH and resumed.model.config.dropout == 0.1

    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "ckpt-00000006.pt")
    halves = load_checkpoint(tmp_path / "halves" / "checkpoints" / "ckpt-00000006.pt")
    for key in ("step", "model", "ema", "optimizer", "rng", "data"):
        assert_same(straight[key], halves[key], key)
    assert halves["data"]["start_batch"] == 6
    # The metrics log goes on where it stopped: the same losses, one line per step.
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "halves")
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in a] == [m["loss"] for m in b]


def test_fused_adam_resumes_bitwise_and_can_be_switched_on_for_a_run(toy_lmdb, tmp_path):
    kw = dict(fused_adam=True, ckpt_every=3, max_steps=6)
    straight = run(opts(toy_lmdb, tmp_path / "straight", **kw))
    run(opts(toy_lmdb, tmp_path / "halves", **dict(kw, max_steps=3)))
    resumed = run(opts(toy_lmdb, tmp_path / "halves", resume=True, max_steps=6, ckpt_every=3))  # fused: the run's
    assert resumed.options.fused_adam is True
    assert straight.optimizer.param_groups[0]["fused"] is resumed.optimizer.param_groups[0]["fused"] is True
    a, b = (
        load_checkpoint(tmp_path / run_dir / "checkpoints" / "ckpt-00000006.pt") for run_dir in ("straight", "halves")
    )
    for key in ("model", "ema", "optimizer"):
        assert_same(a[key], b[key], key)
    # A run of the default Adam goes on fused when asked (the saved optimizer state does not say
    # "not fused"), within rounding of the default's trajectory.
    plain = run(opts(toy_lmdb, tmp_path / "plain", ckpt_every=3, max_steps=3))
    assert plain.optimizer.param_groups[0]["fused"] is None
    switched = run(opts(toy_lmdb, tmp_path / "plain", resume=True, max_steps=6, fused_adam=True))
    assert switched.optimizer.param_groups[0]["fused"] is True
    for x, y in zip(switched.model.parameters(), straight.model.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)


def test_compile_falls_back_with_a_warning_and_is_kept_on_resume(toy_lmdb, tmp_path, monkeypatch):
    eager = run(opts(toy_lmdb, tmp_path / "eager", max_steps=3))
    monkeypatch.setattr(torch, "compile", cannot_compile)
    with pytest.warns(UserWarning, match=r"torch.compile failed here \(RuntimeError\); the network runs uncompiled"):
        fallback = run(opts(toy_lmdb, tmp_path / "compiled", max_steps=3, ckpt_every=3, compile=True))
    for x, y in zip(fallback.model.parameters(), eager.model.parameters()):
        assert torch.equal(x, y)  # the uncompiled network trained, step for step
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["train"]["compile"] is True
    with pytest.warns(UserWarning, match="torch.compile failed here"):
        resumed = run(opts(toy_lmdb, tmp_path / "compiled", resume=True, max_steps=4))
    assert resumed.options.compile is True  # a trajectory option: the run's own on --resume


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run_within_rounding(toy_lmdb, tmp_path):
    eager = run(opts(toy_lmdb, tmp_path / "eager", max_steps=3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = run(opts(toy_lmdb, tmp_path / "compiled", max_steps=3, compile=True))
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]  # it did compile
    for x, y in zip(compiled.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    losses = [m["loss"] for m in metrics(tmp_path / "compiled")]
    assert losses == pytest.approx([m["loss"] for m in metrics(tmp_path / "eager")], rel=1e-4)


def test_the_training_images_are_kept_decoded_within_cache_mb(toy_lmdb, tmp_path):
    kept = build_parts(plan_run(opts(toy_lmdb, tmp_path / "run"))).dataset
    off = build_parts(plan_run(opts(toy_lmdb, tmp_path / "off", cache_mb=0))).dataset
    assert (kept.cache_bytes, off.cache_bytes) == (1024 * 2**20, 0)  # --cache-mb's default, and off


def test_checkpoint_contents_load_with_weights_only(toy_lmdb, tmp_path):
    trainer = run(opts(toy_lmdb, tmp_path / "run", max_steps=2))
    path = latest_checkpoint(tmp_path / "run")
    assert path.name == "ckpt-00000002.pt"  # the end of a run is always saved
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {"step", "model", "ema", "optimizer", "config", "rng", "data"} <= state.keys()
    assert state["step"] == 2 and state["data"]["start_batch"] == 2
    cfg = state["config"]
    assert cfg.keys() == {"preset", "process", "unet", "model_output", "train"}
    assert cfg["preset"] == "toy" and tuple(cfg["process"]["resolution"]) == (RES, RES)
    assert cfg["train"]["batch_size"] == BATCH and cfg["train"]["lr"] == trainer.options.lr
    assert {"train_generator", "ranks", "device_type"} <= state["rng"].keys()
    assert state["rng"]["ranks"][0]["torch"].dtype == torch.uint8
    # config.json says the same thing.
    assert json.loads((tmp_path / "run" / "config.json").read_text())["unet"] == json.loads(json.dumps(cfg["unet"]))
    # Another engineer's sampler rebuilds the EMA model from it.
    process, model = build_from_checkpoint(state)
    assert process.resolution == (RES, RES)
    assert_same(model.state_dict(), trainer.ema.state_dict())
    # The EMA follows the model at a distance (the zero-initialised last conv has moved in both).
    ema_w, model_w = trainer.ema.out[2].weight, trainer.model.out[2].weight
    assert ema_w.abs().sum() > 0 and not torch.equal(ema_w, model_w)


def test_crash_during_save_keeps_previous_checkpoint(toy_lmdb, tmp_path, monkeypatch):
    run(opts(toy_lmdb, tmp_path, max_steps=2, ckpt_every=2))
    good = tmp_path / "checkpoints" / "ckpt-00000002.pt"
    digest = sha256(good)

    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # half the file, then the "crash"
        raise OSError("simulated crash while writing the checkpoint")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="simulated crash"):
        run(opts(toy_lmdb, tmp_path, max_steps=4, ckpt_every=2, resume=True))
    monkeypatch.undo()

    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt-00000002.pt"]  # no torn or temp file
    assert sha256(good) == digest and load_checkpoint(good)["step"] == 2
    # A save killed outright (no cleanup ran) leaves its temp file: the next run removes it.
    (tmp_path / "checkpoints" / ".ckpt-00000004.pt.tmp-99999").write_bytes(b"torn")
    assert run(opts(toy_lmdb, tmp_path, max_steps=3, resume=True)).step == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-00000002.pt", "ckpt-00000003.pt"]


def test_each_rank_gets_its_own_gpu(monkeypatch):
    from blurdiff.distributed import device_for_rank

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    pick = device_for_rank
    assert [pick(None, r, 4) for r in range(4)] == [torch.device("cuda", i) for i in (0, 1, 0, 1)]
    assert pick("cuda:1", 0, 1) == torch.device("cuda", 1) and pick("cpu", 3, 4) == torch.device("cpu")
    assert pick(None, 0, 1) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick("cuda", 5, 8) == torch.device("cuda", 1)


def test_resume_falls_back_past_an_unreadable_checkpoint(toy_lmdb, tmp_path, monkeypatch):
    run(opts(toy_lmdb, tmp_path, max_steps=4, ckpt_every=2, keep=2))
    ckpts = tmp_path / "checkpoints"
    straight = load_checkpoint(ckpts / "ckpt-00000004.pt")
    (ckpts / "ckpt-00000004.pt").write_bytes(b"damaged on disk")

    with pytest.warns(
        UserWarning,
        match=r"skipping ckpt-00000004\.pt: .*not a loadable.*renamed to "
        r"ckpt-00000004\.pt\.unreadable\); resuming from ckpt-00000002\.pt",
    ):
        resumed = build_trainer(opts(toy_lmdb, tmp_path, max_steps=4, ckpt_every=2, keep=2, resume=True))
    assert resumed.step == 2  # from the checkpoint before the damaged one
    resumed.run_loop()
    resumed.close()
    # The damaged file is kept aside, and the redone steps end where the first run ended.
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "ckpt-00000002.pt",
        "ckpt-00000004.pt",
        "ckpt-00000004.pt.unreadable",
    ]
    assert (ckpts / "ckpt-00000004.pt.unreadable").read_bytes() == b"damaged on disk"
    redone = load_checkpoint(ckpts / "ckpt-00000004.pt")
    for key in ("step", "model", "ema", "optimizer"):
        assert_same(straight[key], redone[key], key)

    # A read error says nothing about the file: it propagates and nothing is renamed.
    def failing_load(*args, **kwargs):
        raise PermissionError("simulated read error")

    with monkeypatch.context() as patched, pytest.raises(PermissionError, match="simulated"):
        patched.setattr(torch, "load", failing_load)
        build_trainer(opts(toy_lmdb, tmp_path, max_steps=6, resume=True))
    assert (ckpts / "ckpt-00000004.pt").is_file()

    # Nothing loads: a clear error that names what was tried, and every file stays where it was.
    (ckpts / "ckpt-00000002.pt").write_bytes(b"x")
    (ckpts / "ckpt-00000004.pt").write_bytes(b"y")
    with pytest.raises(ValueError, match=r"no checkpoint in .* loads \(tried ckpt-00000004\.pt, ckpt-00000002\.pt"):
        build_trainer(opts(toy_lmdb, tmp_path, max_steps=6, resume=True))
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "ckpt-00000002.pt",
        "ckpt-00000004.pt",
        "ckpt-00000004.pt.unreadable",
    ]


def test_resume_sets_aside_checkpoints_that_do_not_fit_the_run(toy_lmdb, tmp_path):
    run(opts(toy_lmdb, tmp_path, max_steps=5, ckpt_every=1, keep=0))
    ckpts = tmp_path / "checkpoints"
    straight = load_checkpoint(ckpts / "ckpt-00000005.pt")
    # Each newer checkpoint unpickles, but holds what the run cannot go on from.
    flip_bytes_inside(ckpts / "ckpt-00000005.pt", max(straight["ema"].values(), key=torch.Tensor.numel))
    damage = {
        4: lambda s: s["model"].pop("out.2.weight"),
        3: lambda s: s["ema"]["out.2.bias"].fill_(float("nan")),
        2: lambda s: s["optimizer"]["param_groups"][0]["params"].pop(),
    }
    for step, change in damage.items():
        state = load_checkpoint(ckpts / f"ckpt-{step:08d}.pt")
        change(state)
        save_checkpoint(state, ckpts / f"ckpt-{step:08d}.pt")  # with a valid checksum

    with pytest.warns(UserWarning) as caught:
        resumed = build_trainer(opts(toy_lmdb, tmp_path, max_steps=5, ckpt_every=1, keep=0, resume=True))
    assert resumed.step == 1
    said = [str(w.message) for w in caught if "skipping" in str(w.message)]
    for step, reason in [
        (5, "content does not match its checksum"),
        (4, "the model weights do not fit the network its config describes: .*out.2.weight"),
        (3, "the ema weights are not finite"),
        (2, "the optimizer state does not fit the network"),
    ]:
        name = f"ckpt-{step:08d}.pt"
        assert any(
            re.search(
                f"skipping {name}: .*{name}: {reason}.*renamed to {name}.unreadable\\); resuming from ckpt-00000001.pt",
                m,
            )
            for m in said
        ), (step, said)
        assert (ckpts / f"{name}.unreadable").is_file()
    # The redone steps end where the first run ended.
    resumed.run_loop()
    resumed.close()
    redone = load_checkpoint(ckpts / "ckpt-00000005.pt")
    for key in ("step", "model", "ema", "optimizer"):
        assert_same(straight[key], redone[key], key)


@pytest.fixture(scope="module")
def two_checkpoints(toy_lmdb, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two") / "run"
    run(opts(toy_lmdb, out, max_steps=2, ckpt_every=1, keep=0))
    return out


def _set(path: str, value):
    def change(state):
        *parents, last = path.split(".")
        for key in parents:
            state = state[int(key) if isinstance(state, list) or key.isdigit() else key]
        state[last] = value

    return change


@pytest.mark.parametrize(
    "change, reason",
    [
        (_set("optimizer.state.0.exp_avg", torch.zeros(3)), "parameter 0's exp_avg must be a finite float tensor"),
        (_set("optimizer.param_groups.0.betas", (2.0, 0.999)), "Adam betas must be two numbers in \\[0, 1\\)"),
        (_set("optimizer.param_groups.0.eps", float("nan")), "the optimizer's eps must be a finite number"),
        (_set("rng.train_generator", torch.zeros(3, dtype=torch.uint8)), "rng.train_generator is not a CPU generator"),
        (_set("rng.ranks", "x"), "rng.ranks must be a list"),
        (_set("rng.ranks.0.torch", torch.zeros(2)), "rng.ranks\\[0\\].torch must be a generator state"),
        (_set("health", "x"), "the health record is not an object"),
        (_set("health.monitor.windows", "x"), "the health monitor's state is malformed"),
        (_set("health.monitor._steps", -1), "the health monitor's state is malformed"),
        (_set("data.start_batch", "x"), "data.start_batch must be an integer"),
        (_set("step", -1), "its step must be an integer of at least 0, not -1"),
        (_set("step", 7), "it holds step 7, not the step of its name"),
        (_set("step", None), "its step must be an integer of at least 0, not None"),
        (_set("data_stats.count", float("inf")), "count must be an integer of at least 1, not inf"),
        (_set("data_stats.channel_mean", []), "channel_mean and channel_std must be finite numbers, one per channel"),
        (_set("data_stats.channel_std", [float("nan")] * 3), "channel_mean and channel_std must be finite numbers"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_resume_sets_aside_a_checkpoint_holding_what_the_run_cannot_go_on_from(
    change, reason, two_checkpoints, toy_lmdb, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    newest = out / "checkpoints" / "ckpt-00000002.pt"
    state = load_checkpoint(newest)
    change(state)
    save_checkpoint(state, newest)  # with a valid checksum: what the file holds is wrong, not its bytes
    with pytest.warns(UserWarning, match=f"skipping ckpt-00000002.pt: .*{reason}.*resuming from ckpt-00000001.pt"):
        resumed = build_trainer(opts(toy_lmdb, out, max_steps=2, ckpt_every=1, keep=0, resume=True))
    assert resumed.step == 1 and (out / "checkpoints" / "ckpt-00000002.pt.unreadable").is_file()
    resumed.run_loop()  # and it goes on
    resumed.close()
    assert load_checkpoint(newest)["step"] == 2


def test_resume_refuses_a_run_whose_only_checkpoint_has_non_finite_weights(toy_lmdb, tmp_path, capsys):
    run(opts(toy_lmdb, tmp_path, max_steps=1))
    path = tmp_path / "checkpoints" / "ckpt-00000001.pt"
    state = load_checkpoint(path)
    state["model"]["out.2.weight"].fill_(float("inf"))
    save_checkpoint(state, path)
    args = parse(cli_args(toy_lmdb, tmp_path, 2, "--resume"))
    assert main(args) == 2
    assert f"{path}: the model weights are not finite" in capsys.readouterr().err
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # nothing set aside, nothing new


def test_resume_on_another_data_set_size_warns(toy_lmdb, tmp_path):
    run(opts(toy_lmdb, tmp_path / "run", max_steps=2))
    smaller = tmp_path / "smaller"
    make_toy_lmdb(str(smaller), 16, RES)
    with pytest.warns(UserWarning, match="data set of 16 images .*trained on 32.*re-cut"):
        trainer = build_trainer(opts(smaller, tmp_path / "run", max_steps=3, resume=True))
    assert trainer.step == 2 and trainer.loader.next_batch == 2


def test_keep_prunes_old_checkpoints(toy_lmdb, tmp_path):
    run(opts(toy_lmdb, tmp_path / "keep2", max_steps=5, ckpt_every=1, keep=2))
    assert [p.name for p in list_checkpoints(tmp_path / "keep2")] == ["ckpt-00000004.pt", "ckpt-00000005.pt"]
    run(opts(toy_lmdb, tmp_path / "all", max_steps=3, ckpt_every=1, keep=0))
    assert len(list_checkpoints(tmp_path / "all")) == 3


def test_nan_loss_stops_without_saving(toy_lmdb, tmp_path, monkeypatch, capsys):
    run(opts(toy_lmdb, tmp_path, max_steps=3, ckpt_every=3))
    good = tmp_path / "checkpoints" / "ckpt-00000003.pt"
    digest = sha256(good)

    real_next = Trainer._next_batch

    def poisoned(self):  # the batch of step 5 holds a NaN pixel
        batch = real_next(self)
        if self.step == 4:
            batch[0, 0, 0, 0] = float("nan")
        return batch

    monkeypatch.setattr(Trainer, "_next_batch", poisoned)
    with pytest.raises(NonFiniteLossError) as err:
        run(opts(toy_lmdb, tmp_path, max_steps=8, ckpt_every=1, resume=True))
    assert err.value.step == 5 and "step 5" in str(err.value) and "nan" in str(err.value)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    assert sha256(good) == digest
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3, 4]

    # Through the command: exit code 3 and a message naming the step and the loss.
    args = parse(cli_args(toy_lmdb, tmp_path, 8, "--resume"))
    assert main(args) == 3
    message = capsys.readouterr().err
    assert "step 5" in message and "loss=nan" in message and "intact" in message
    assert latest_checkpoint(tmp_path).name == "ckpt-00000004.pt"


def test_refuses_existing_run_without_resume_and_changed_process(toy_lmdb, tmp_path):
    run(opts(toy_lmdb, tmp_path, max_steps=1))
    with pytest.raises(ValueError, match="--resume"):
        build_trainer(opts(toy_lmdb, tmp_path, max_steps=2))
    with pytest.raises(ValueError, match="different process"):
        build_trainer(opts(toy_lmdb, tmp_path, max_steps=2, resume=True, process_overrides={"f_max": 0.6}))
    with pytest.raises(ValueError, match="different preset"):
        build_trainer(opts(toy_lmdb, tmp_path, max_steps=2, resume=True, preset="lsun64-noblur"))
    assert build_trainer(opts(toy_lmdb, tmp_path, max_steps=2, resume=True)).step == 1
    # --resume on a run folder without checkpoints starts a new run.
    assert build_trainer(opts(toy_lmdb, tmp_path / "new", resume=True)).step == 0


def test_refuses_an_out_folder_that_is_not_a_run(toy_lmdb, tmp_path, capsys):
    mine = tmp_path / "project"
    (mine / "data").mkdir(parents=True)
    files = {"config.json": '{"name": "my project"}\n', "metrics.jsonl": '{"accuracy": 0.9}\n', "notes.txt": "mine"}
    for name, text in files.items():
        (mine / name).write_text(text)
    for resume in (False, True):
        with pytest.raises(
            FileExistsError,
            match=f"--out {mine} is not empty and is not a blurdiff run .*it holds "
            f"config.json, data/, metrics.jsonl ... \\(4 in all\\)",
        ):
            build_trainer(opts(toy_lmdb, mine, resume=resume))
    # Through `python -m blurdiff.cli.train`'s own main: a one-line error and exit code 2.
    args = parse(cli_args(toy_lmdb, mine, 1))
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"blurdiff train: error: --out {mine} is not empty")
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "data", "metrics.jsonl", "notes.txt"]
    assert {name: (mine / name).read_text() for name in files} == files

    # Fine: an empty folder, and a run killed before its first save (config.json and metrics.jsonl
    # but no checkpoint), resumed.
    (tmp_path / "empty").mkdir()
    assert run(opts(toy_lmdb, tmp_path / "empty", max_steps=1)).step == 1
    killed = tmp_path / "killed"
    run(opts(toy_lmdb, killed, max_steps=2))
    shutil.rmtree(killed / "checkpoints")
    assert run(opts(toy_lmdb, killed, max_steps=1, resume=True)).step == 1
    assert [m["step"] for m in metrics(killed)] == [1]


def test_a_second_training_in_one_run_folder_is_refused(toy_lmdb, tmp_path, capsys):
    """Two trainings in one folder would interleave their checkpoints and metrics.jsonl: while one
    process trains there, another is refused, told which; the lock dies with its process (here
    killed, as a crash would), and the lock file does not make the folder someone else's."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom blurdiff.run_folder import run_lock\n"
            f"with run_lock({str(out)!r}):\n    print('locked', flush=True)\n    time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=f"{out} is being trained by process {holder.pid} on "):
            train(opts(toy_lmdb, out, max_steps=1))
        args = cli_args(toy_lmdb, out, 1)
        assert main(parse(args + ["--device", "cpu", "--resume"])) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"blurdiff train: error: {out} is being trained by process {holder.pid}")
        assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK]  # nothing written beside the lock
    finally:
        holder.kill()
        holder.wait()
    assert train(opts(toy_lmdb, out, max_steps=1)).step == 1
    assert train(opts(toy_lmdb, out, max_steps=2, resume=True)).step == 2
    with run_lock(out):  # also within one process: the lock is per open file, not per process
        with pytest.raises(RunInUseError):
            train(opts(toy_lmdb, out, max_steps=3, resume=True))


def read_only(monkeypatch, folder: Path) -> None:
    """Files cannot be created in ``folder``, as in a read-only one (permission bits do not stop
    the root user these tests may run as)."""
    real_open = os.open

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)


def test_unwritable_run_folder_fails_at_the_start(toy_lmdb, tmp_path, monkeypatch, capsys):
    run(opts(toy_lmdb, tmp_path / "run", max_steps=1))
    ckpts = tmp_path / "run" / "checkpoints"
    with monkeypatch.context() as patched:
        read_only(patched, ckpts)
        with pytest.raises(PermissionError, match=f"cannot write the run's checkpoints and logs .*'{ckpts}'"):
            build_trainer(opts(toy_lmdb, tmp_path / "run", max_steps=3, resume=True))
        args = parse(cli_args(toy_lmdb, tmp_path / "run", 3, "--resume"))
        assert main(args) == 2
    assert capsys.readouterr().err == (
        f"blurdiff train: error: cannot write the run's checkpoints and logs (Permission denied): {ckpts}\n"
    )
    assert [p.name for p in ckpts.iterdir()] == ["ckpt-00000001.pt"]
    # A new run in a folder that cannot be written: the folder named, nothing made.
    (tmp_path / "shared").mkdir()
    with monkeypatch.context() as patched:
        read_only(patched, tmp_path / "shared")
        with pytest.raises(PermissionError, match=f"'{tmp_path / 'shared'}'"):
            build_trainer(opts(toy_lmdb, tmp_path / "shared" / "run"))
    assert not list((tmp_path / "shared").iterdir())


def test_metrics_log_resumes_without_duplicates(toy_lmdb, tmp_path):
    run(opts(toy_lmdb, tmp_path, max_steps=4, ckpt_every=2, keep=0, log_every=1))
    lines = metrics(tmp_path)
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    for m in lines:
        assert m.keys() == {"step", "loss", "lr", "grad_norm", "images_per_s", "time"}
        preset = get_preset("toy")  # the learning rate of the warm-up's step m["step"]
        assert m["loss"] > 0 and m["grad_norm"] > 0 and m["images_per_s"] > 0
        assert m["lr"] == pytest.approx(preset.lr * m["step"] / preset.warmup_steps)
    # A crash after step 4 was logged but before it was checkpointed, mid-way through a line.
    (tmp_path / "checkpoints" / "ckpt-00000004.pt").unlink()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    run(opts(toy_lmdb, tmp_path, max_steps=5, resume=True, log_every=1))
    after = metrics(tmp_path)
    assert [m["step"] for m in after] == [1, 2, 3, 4, 5]
    assert after[:2] == lines[:2] and after[3]["loss"] == lines[3]["loss"]  # step 4 redone, bitwise


def test_log_every_averages_a_window(toy_lmdb, tmp_path):
    run(opts(toy_lmdb, tmp_path / "every", max_steps=5, log_every=1))
    run(opts(toy_lmdb, tmp_path / "windows", max_steps=5, log_every=2))
    each = [m["loss"] for m in metrics(tmp_path / "every")]
    windows = metrics(tmp_path / "windows")
    assert [m["step"] for m in windows] == [2, 4, 5]  # and always the last step
    expected = [(each[0] + each[1]) / 2, (each[2] + each[3]) / 2, each[4]]
    assert [m["loss"] for m in windows] == pytest.approx(expected, rel=1e-12)


def test_sample_grid_is_written(toy_lmdb, tmp_path):
    run(opts(toy_lmdb, tmp_path, max_steps=2, sample_every=2, sample_n=4, process_overrides={"num_timesteps": 10}))
    path = tmp_path / "samples" / "step-00000002.png"
    with Image.open(path) as img:
        assert img.size == (2 * (RES + 2) + 2,) * 2 and img.mode == "RGB"


def test_grad_clip_bounds_the_gradient(toy_lmdb, tmp_path):
    trainer = build_trainer(opts(toy_lmdb, tmp_path, grad_clip=1e-3))
    _, norm = trainer.run_step(trainer._next_batch())
    clipped = torch.nn.utils.get_total_norm([p.grad for p in trainer.model.parameters()])
    assert norm > 1e-2 and clipped == pytest.approx(1e-3, rel=1e-3)


def test_bf16_autocast_on_cpu(toy_lmdb, tmp_path):
    trainer = build_trainer(opts(toy_lmdb, tmp_path, max_steps=1, amp="bf16"))
    seen = []
    trainer.model.out.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    loss, _ = trainer.run_step(trainer._next_batch())
    assert seen == [torch.bfloat16] and np.isfinite(loss)  # the network ran in bf16, the loss is fine
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # the weights stay fp32


# --------------------------------------------------------------------------------------------
# data formats
# --------------------------------------------------------------------------------------------


def _webp(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="WEBP", quality=90)
    return buf.getvalue()


def make_lsun_lmdb(path: Path, n: int = 8) -> Path:
    """Like the LSUN release: 40-hex ids as keys, lossy webp of non-square photos as values."""
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(n):
            img = np.array(Image.fromarray(toy_image(i, 64, seed=7)).resize((60, 45)))
            txn.put(hashlib.sha1(f"bedroom-{i}".encode()).hexdigest().encode(), _webp(img))
    env.close()
    return path


def make_image_folder(path: Path, n: int = 8) -> Path:
    path.mkdir()
    for i in range(n):
        Image.fromarray(toy_image(i, 24, seed=3)).save(path / f"{i:03d}.png")
    return path


@pytest.mark.parametrize("make", [make_lsun_lmdb, make_image_folder], ids=["lsun-lmdb", "image-folder"])
def test_trains_on_lsun_lmdb_and_image_folder(make, tmp_path):
    data = make(tmp_path / "data")
    trainer = run(opts(data, tmp_path / "run", max_steps=2))
    assert trainer.num_images == 8 and trainer.step == 2 and trainer.loader.next_batch == 2


def test_trainer_takes_a_process_network_and_data_set_of_ones_own(toy_lmdb, tmp_path):
    from blurdiff import BlurDiffusion, ProcessConfig, build_unet

    # The parts build_parts makes from the plan, handed over: the run build_trainer makes.
    run(opts(toy_lmdb, tmp_path / "straight", max_steps=2))
    plan = plan_run(opts(toy_lmdb, tmp_path / "parts", max_steps=2))
    handed = Trainer(plan, *build_parts(plan))
    handed.run_loop()
    handed.close()
    for key in ("step", "model", "ema", "optimizer", "rng", "data", "data_stats"):
        assert_same(
            load_checkpoint(latest_checkpoint(tmp_path / "straight"))[key],
            load_checkpoint(latest_checkpoint(tmp_path / "parts"))[key],
            key,
        )

    # A data set of plain tensors (no flips), another process and network: the data statistics are
    # measured on it, and the run resumes from its checkpoint onto parts built again.
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.rand(3, RES, RES, generator=torch.Generator().manual_seed(i)) * 2 - 1

    def parts_of_my_own():
        torch.manual_seed(0)
        return dict(
            process=BlurDiffusion(ProcessConfig(resolution=RES, num_timesteps=50)),
            model=build_unet("tiny", image_size=RES),
        )

    mine = Trainer(plan_run(opts("noise", tmp_path / "mine", max_steps=2)), dataset=Noise(), **parts_of_my_own())
    mine.run_loop()
    mine.close()
    state = load_checkpoint(latest_checkpoint(tmp_path / "mine"))
    assert state["config"]["process"]["num_timesteps"] == 50 and state["data_stats"]["count"] == 8
    process, model = build_from_checkpoint(state)
    assert process.num_timesteps == 50 and model.config == mine.model.config
    resumed = Trainer(
        plan_run(opts("noise", tmp_path / "mine", max_steps=3, resume=True)), dataset=Noise(), **parts_of_my_own()
    )
    assert resumed.step == 2 and resumed.process.data_stats.count == 8
    assert_same(resumed.model.state_dict(), state["model"])


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv + ["--batch-size", str(BATCH), "--resolution", str(RES)])


@pytest.fixture
def cli_main():
    from blurdiff.cli import main as cli

    return cli


def test_cli_end_to_end(toy_lmdb, tmp_path, cli_main, capsys):
    out = tmp_path / "run"
    argv = ["train", *cli_args(toy_lmdb, out, 2, "--batch-size", "4", "--resolution", str(RES), "--log-every", "1")]
    assert cli_main(argv) == 0
    assert latest_checkpoint(out).name == "ckpt-00000002.pt" and len(metrics(out)) == 2
    # Two steps of an untrained network: the final check samples noise far out of range, and says so.
    said = capsys.readouterr().out
    assert "run NOT HEALTHY: too short to judge" in said and "look diverged" in said
    assert metrics(out, events=True)[-1]["event"] == "end" and not metrics(out, events=True)[-1]["healthy"]
    assert cli_main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert cli_main(["train", *cli_args(toy_lmdb, out, 3, "--resume")]) == 0  # the rest: from the run
    assert load_checkpoint(latest_checkpoint(out))["config"]["train"]["batch_size"] == 4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--data": "MISSING"}, "does not exist"),
        ({"--data": "EMPTY"}, "empty data set"),
        ({"--preset": "nope"}, "unknown preset 'nope'; valid presets"),
        ({"--amp": "fp16"}, "fp16 needs CUDA"),
        ({"--max-steps": "-1"}, "--max-steps must be >= 0"),
        ({"--cache-mb": "-1"}, "--cache-mb must be >= 0 (0: off), got -1.0"),
    ],
)
def test_cli_bad_input(toy_lmdb, tmp_path, cli_main, capsys, change, message):
    (tmp_path / "EMPTY").mkdir()
    values = {
        "--data": str(toy_lmdb),
        "--preset": "toy",
        "--out": str(tmp_path / "run"),
        "--max-steps": "1",
        "--device": "cpu",
    }
    for k, v in change.items():
        values[k] = str(tmp_path / v) if v in ("MISSING", "EMPTY") else v
    argv = ["train", *[s for kv in values.items() for s in kv], "--resolution", str(RES)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "blurdiff train: error:" in err and message in err
    assert latest_checkpoint(tmp_path / "run") is None


# --------------------------------------------------------------------------------------------
# several processes
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, options: TrainOptions, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    trainer = train(options)
    torch.save(
        {
            "model": trainer.model.state_dict(),
            "ema": trainer.ema.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
        },
        os.path.join(out, f"rank{rank}.pt"),
    )


def test_ddp_gloo_two_processes_match_each_other_and_one_process(toy_lmdb, tmp_path):
    steps = 3
    ddp = opts(toy_lmdb, tmp_path / "ddp", max_steps=steps, batch_size=BATCH // 2, ckpt_every=2)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), ddp, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert_same(r0, r1)  # the ranks never drift apart

    # Resuming past a damaged newest checkpoint: rank 0 picks the one before for both ranks,
    # and the redone step ends where the first run ended.
    ckpts = tmp_path / "ddp" / "checkpoints"
    (ckpts / f"ckpt-{steps:08d}.pt").write_bytes(b"damaged")
    again = tmp_path / "again"
    again.mkdir()
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, _free_port(), dataclasses.replace(ddp, resume=True), str(again)), nprocs=2, join=True
    )
    for r in (0, 1):
        assert_same(torch.load(again / f"rank{r}.pt", weights_only=True), r0)
    assert (ckpts / f"ckpt-{steps:08d}.pt.unreadable").read_bytes() == b"damaged"
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "ddp"))
    assert_same(ckpt["model"], r0["model"])
    assert ckpt["data"]["world_size"] == 2 and len(ckpt["rng"]["ranks"]) == 2
    assert [m["step"] for m in metrics(tmp_path / "ddp")] == [1, 2, 3]  # rank 0 alone logs

    # One process with the same global batch sees the same images, t and noise (the ranks take
    # interleaved slices of the global batch and of the global draws), so it ends at the same
    # weights up to float summation order (a gradient all-reduce vs. one batch-mean).
    single = run(opts(toy_lmdb, tmp_path / "single", max_steps=steps, batch_size=BATCH))
    losses_ddp = [m["loss"] for m in metrics(tmp_path / "ddp")]
    losses_one = [m["loss"] for m in metrics(tmp_path / "single")]
    np.testing.assert_allclose(losses_ddp, losses_one, rtol=1e-5)
    for name, p in single.model.state_dict().items():
        torch.testing.assert_close(r0["model"][name], p, rtol=0, atol=2e-5, msg=name)


@pytest.mark.slow
def test_torchrun_two_processes(toy_lmdb, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        "-m",
        "blurdiff.cli.train",
        *cli_args(toy_lmdb, out, 2, "--batch-size", "2", "--resolution", str(RES)),
    ]
    # The packages these tests import (installed, with their kernels, under scripts/test.sh; the
    # source tree in a developer's `python -m pytest`), not whatever the working folder holds.
    import blurdiff

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(blurdiff.__file__).resolve().parents[1]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained toy to step 2") == 1  # rank 0 alone reports
    assert load_checkpoint(latest_checkpoint(out))["data"]["world_size"] == 2


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# --------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_cuda_training_amp_resume_and_samples(toy_lmdb, tmp_path, amp):
    kw = dict(device="cuda", amp=amp, ckpt_every=2, sample_every=4, sample_n=4, process_overrides={"num_timesteps": 20})
    trainer = run(opts(toy_lmdb, tmp_path, max_steps=4, **kw))
    assert trainer.device.type == "cuda" and (tmp_path / "samples" / "step-00000004.png").exists()
    state = torch.load(latest_checkpoint(tmp_path), map_location="cpu", weights_only=True)
    assert state["rng"]["device_type"] == "cuda" and state["rng"]["ranks"][0]["cuda"] is not None
    assert (state["scaler"] is not None) == (amp == "fp16")
    resumed = run(opts(toy_lmdb, tmp_path, max_steps=6, resume=True, **kw))
    assert resumed.step == 6 and all(np.isfinite(m["loss"]) for m in metrics(tmp_path))
    process, model = build_from_checkpoint(load_checkpoint(latest_checkpoint(tmp_path)), device="cuda")
    assert next(model.parameters()).is_cuda


def test_eps_residual_output_trains_saves_and_samples(toy_lmdb, tmp_path):
    """A preset with model_output="eps_residual" (the photos32 ones): the network adds to the
    Gaussian reference's ε, which it equals at initialisation (zero last layer); the checkpoint
    says so and rebuilds the same predictor."""
    from blurdiff.diffusion import ReferenceResidual

    trainer = run(opts(toy_lmdb, tmp_path, preset="photos32-quartic", max_steps=2, ckpt_every=2))
    assert trainer.config["model_output"] == "eps_residual"
    state = load_checkpoint(latest_checkpoint(tmp_path))
    process, model = build_from_checkpoint(state)
    assert isinstance(model, ReferenceResidual) and model.config.image_size == RES
    x = torch.randn(3, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 500, 1000])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), model.process.reference_eps(x, t) + model.net(x, t))
        fresh = ReferenceResidual(type(model.net)(model.net.config), process)  # zero-initialised output
        torch.testing.assert_close(fresh(x, t), process.reference_eps(x, t))
    # ε̄_ref is the exact predictor of Gaussian data of the data's power: at t = N, per frequency,
    # √(1-Ā) x̄ / (Ā v + 1 - Ā) (float32 op: to 1e-4).
    tab = process.tables("cpu", torch.float64)
    ref_bar = blurdiff_ops.reference.to_spectral(process.reference_eps(x, t)[2].double(), tab["U_h"], tab["U_w"])
    x_bar = blurdiff_ops.reference.to_spectral(x[2].double(), tab["U_h"], tab["U_w"])
    rho, v = process.A_bar[1000], process.data_stats.reference_var
    torch.testing.assert_close(
        ref_bar / x_bar, ((1 - rho).sqrt() / (rho * v + 1 - rho)).expand_as(x_bar), rtol=1e-4, atol=0
    )


def test_learning_rate_schedules(toy_lmdb, tmp_path):
    """Warm-up, then constant or a half cosine to 0 at --max-steps; a run resumes with the
    schedule it trained with, not the preset's default."""
    assert get_preset("toy").lr_schedule == "cosine"
    cosine = build_trainer(opts(toy_lmdb, tmp_path / "c", max_steps=20, warmup_steps=4, lr=1e-3))
    constant = build_trainer(
        opts(toy_lmdb, tmp_path / "k", max_steps=20, warmup_steps=4, lr=1e-3, lr_schedule="constant")
    )
    for t in (cosine, constant):
        assert [t.learning_rate(s) for s in range(3)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4])
        t.close()
    assert [cosine.learning_rate(s) for s in (3, 11, 19)] == pytest.approx([1e-3, 5e-4, 0.0], abs=1e-12)
    assert [constant.learning_rate(s) for s in (3, 11, 19)] == [1e-3] * 3

    run(opts(toy_lmdb, tmp_path / "old", max_steps=2, ckpt_every=2, lr_schedule="constant"))
    resumed = build_trainer(opts(toy_lmdb, tmp_path / "old", max_steps=4, resume=True))
    assert resumed.options.lr_schedule == "constant"
    resumed.close()
    with pytest.raises(ValueError, match="--lr-schedule must be one of"):
        build_trainer(opts(toy_lmdb, tmp_path / "bad", lr_schedule="step"))
