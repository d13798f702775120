"""Checkpoints whose content is wrong: bytes flipped on disk (the checksum), NaN or inf weights
(refused for sampling), and checkpoints from before the checksum (still loaded). Refusals on
``--resume`` and the fall-back to an older checkpoint are in test_train.py.

The checkpoints are tests/helpers.py's: a tiny UNet at 16x16 with random weights, in the
documented format.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings

import pytest
import torch
from helpers import flip_bytes_inside, make_run
from safetensors.torch import load_file, save_file

from blurdiff.atomic import file_sha256
from blurdiff.checkpoint import (
    CHECKSUM_KEY,
    build_from_checkpoint,
    content_checksum,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from blurdiff.cli import main
from blurdiff.export import export_run, load_export
from blurdiff.statistics import DataStatistics
from blurdiff.unet import UNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops (see conftest.one_torch_thread)


def sample(capsys, run, out, *extra) -> tuple[int, str]:
    """``blurdiff sample`` of two images: the exit code and stderr."""
    capsys.readouterr()
    rc = main(
        [
            "sample",
            "--run",
            str(run),
            "--out",
            str(out),
            "--n",
            "2",
            "--batch-size",
            "2",
            "--quiet",
            "--steps",
            "4",
            "--sampler",
            "ddim",
            *map(str, extra),
        ]
    )
    return rc, capsys.readouterr().err


def test_flipped_bytes_inside_tensor_data_fail_the_checksum(tmp_path, capsys):
    path = latest_checkpoint(make_run(tmp_path / "run"))
    state = load_checkpoint(path)
    assert state[CHECKSUM_KEY] == content_checksum(state)  # saved with one, and it survives a load
    name, ema = max(state["ema"].items(), key=lambda kv: kv[1].numel())
    flip_bytes_inside(path, ema)

    # The file still unpickles, into finite weights that are wrong: only the checksum can tell.
    damaged = torch.load(path, map_location="cpu", weights_only=True)["ema"][name]
    assert torch.isfinite(damaged).all() and not torch.equal(damaged, ema)
    with pytest.raises(ValueError, match="content does not match its checksum \\(damaged on disk\\?\\)") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    rc, err = sample(capsys, tmp_path / "run", tmp_path / "out")
    assert rc == 2 and path.name in err and "checksum" in err
    assert not (tmp_path / "out").exists()


def test_the_checksum_covers_the_plain_data_too(tmp_path):
    path = latest_checkpoint(make_run(tmp_path / "run"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["config"]["process"]["num_timesteps"] += 1  # a changed number of steps: other images, same weights
    torch.save(state, path)  # with the old checksum
    with pytest.raises(ValueError, match="does not match its checksum"):
        load_checkpoint(path)
    save_checkpoint(state, path)  # a loaded state saved again gets a new checksum
    assert load_checkpoint(path)["config"]["process"]["num_timesteps"] == state["config"]["process"]["num_timesteps"]


def test_checkpoints_from_before_the_checksum_still_load(tmp_path, capsys):
    path = latest_checkpoint(make_run(tmp_path / "run"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    del state[CHECKSUM_KEY]
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CHECKSUM_KEY not in load_checkpoint(path)
    rc, err = sample(capsys, tmp_path / "run", tmp_path / "out")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["000000.png", "000001.png"]


def test_records_of_blurdiff_0_1_load_under_todays_names(tmp_path, capsys):
    """Checkpoints and exports of 0.1 name N ``steps``: they load, sample the same images and
    export again under ``num_timesteps``."""
    run = make_run(tmp_path / "run")
    path = latest_checkpoint(run)
    state = torch.load(path, map_location="cpu", weights_only=True)
    N = state["config"]["process"]["num_timesteps"]
    assert sample(capsys, run, tmp_path / "now")[0] == 0
    state["config"]["process"] = {
        ("steps" if k == "num_timesteps" else k): v for k, v in state["config"]["process"].items()
    }
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)["config"]["process"]
    assert list(loaded) == [("num_timesteps" if k == "steps" else k) for k in state["config"]["process"]]
    assert loaded["num_timesteps"] == N
    assert sample(capsys, run, tmp_path / "then")[0] == 0
    for name in ("000000.png", "000001.png"):
        assert (tmp_path / "then" / name).read_bytes() == (tmp_path / "now" / name).read_bytes()
    export_run(ckpt=path, out=tmp_path / "export")
    config_file = tmp_path / "export" / "config.json"
    config = json.loads(config_file.read_text())
    assert config["process"]["num_timesteps"] == N
    config["process"]["steps"] = config["process"].pop("num_timesteps")
    config_file.write_text(json.dumps(config))
    assert load_export(tmp_path / "export")[0].num_timesteps == N


@pytest.mark.parametrize("which", ["ema", "model"])
def test_non_finite_weights_are_refused_for_sampling(tmp_path, capsys, which):
    path = latest_checkpoint(make_run(tmp_path / "run"))
    state = load_checkpoint(path)
    state[which]["out.2.bias"][0] = float("nan")
    state[which]["input_blocks.0.0.weight"][0, 0, 0, 0] = float("inf")
    save_checkpoint(state, path)  # a valid checksum: the run had diverged when it saved them

    use_ema = which == "ema"
    with pytest.raises(ValueError, match=f"{path}: the {which} weights are not finite \\(NaN or inf in 2 of "):
        build_from_checkpoint(load_checkpoint(path), use_ema=use_ema, source=path)
    rc, err = sample(capsys, tmp_path / "run", tmp_path / "out", *([] if use_ema else ["--no-ema"]))
    assert rc == 2 and f"{path}: the {which} weights are not finite" in err
    assert not list((tmp_path / "out").glob("*.png"))
    # The other weights are finite: sampling with them is fine.
    rc, err = sample(capsys, tmp_path / "run", tmp_path / "other", *(["--no-ema"] if use_ema else []))
    assert rc == 0, err


@pytest.mark.parametrize("source", ["run", "export"])
def test_a_config_larger_than_its_weights_is_refused_before_a_network_is_built(source, tmp_path, capsys, monkeypatch):
    # A config edited to describe a wider network (the weights are the run's): comparing the
    # shapes must not need that network built, which at model_channels=3072 is 30 GiB.
    run = make_run(tmp_path / "run")
    path = latest_checkpoint(run)
    if source == "run":
        state = load_checkpoint(path)
        state["config"]["unet"]["model_channels"] = 64
        save_checkpoint(state, path)
        argv, named = ["--run", run], f"{path}: the ema weights"
    else:
        export_run(run=run, out=tmp_path / "e")
        config = tmp_path / "e" / "config.json"
        document = json.loads(config.read_text())
        document["unet"]["model_channels"] = 64
        config.write_text(json.dumps(document))
        argv, named = ["--export", tmp_path / "e"], f"{tmp_path / 'e' / 'model.safetensors'}: the weights"
    built = []
    real_init = UNet.__init__

    def spy(self, config):
        built.append(torch.empty(0).device.type)  # where a network of this config would be allocated
        real_init(self, config)

    monkeypatch.setattr(UNet, "__init__", spy)
    capsys.readouterr()
    rc = main(["sample", *map(str, argv), "--out", str(tmp_path / "o"), "--n", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{named} do not fit the network its config describes: " in err, err
    assert (
        "165 of 166 tensors have another shape (first time_embed.0.weight: [128, 32], the network's [256, 64])" in err
    )
    assert built == ["meta"] and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda w: w.update({"out.2.bias": w["out.2.bias"].to(torch.int32)}), "are not floating point"),
        (lambda w: w.pop("out.2.bias"), "do not fit the network its config describes: 1 missing (first out.2.bias)"),
        (lambda w: w["out.2.bias"].fill_(float("nan")), "are not finite (NaN or inf in 1 of"),
    ],
    ids=["int32", "missing", "nan"],
)
def test_one_check_for_weights_from_a_checkpoint_and_an_export(change, message, tmp_path):
    run = make_run(tmp_path / "run")
    path = latest_checkpoint(run)
    export_run(run=run, out=tmp_path / "e")
    state = load_checkpoint(path)
    change(state["ema"])
    with pytest.raises(ValueError, match=re.escape(f"{path}: the ema weights {message}")):
        build_from_checkpoint(state, source=path)
    weights_path = tmp_path / "e" / "model.safetensors"
    weights = load_file(str(weights_path))
    change(weights)
    save_file(weights, str(weights_path))
    config = tmp_path / "e" / "config.json"
    config.write_text(
        config.read_text().replace(json.loads(config.read_text())["weights_sha256"], file_sha256(weights_path))
    )
    with pytest.raises(ValueError, match=re.escape(f"{weights_path}: the weights {message}")):
        load_export(tmp_path / "e")


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("count", float("inf"), "count must be an integer of at least 1, not inf"),  # was an OverflowError
        ("channel_mean", [], "channel_mean and channel_std must be finite numbers, one per channel"),
        ("channel_std", [float("nan")] * 3, "channel_mean and channel_std must be finite"),  # switched the guard off
    ],
)
def test_malformed_data_statistics_are_one_line_in_sampling_export_and_the_export_sampled(
    key, value, reason, tmp_path, capsys
):
    run = make_run(tmp_path / "run")
    path = latest_checkpoint(run)
    state = load_checkpoint(path)
    good = DataStatistics(4, [0.0] * 3, [0.5] * 3, torch.ones(16, 16, dtype=torch.float64))
    export_run(run=run, out=tmp_path / "good")  # statistics of its own, spoilt below in its config.json
    state["data_stats"] = {**good.to_state(), key: value}
    save_checkpoint(state, path)
    rc, err = sample(capsys, run, tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1 and f"{path}" in err and reason in err, err
    with pytest.raises(ValueError, match=re.escape(reason)):
        export_run(run=run, out=tmp_path / "e")
    assert not (tmp_path / "e").exists()
    config = tmp_path / "good" / "config.json"
    document = json.loads(config.read_text())
    document["data_stats"] = {**good.to_json(), key: value}
    config.write_text(json.dumps(document))
    capsys.readouterr()
    rc = main(["sample", "--export", str(tmp_path / "good"), "--out", str(tmp_path / "o2"), "--n", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(config) in err and reason in err, err


def test_an_empty_or_pickled_checkpoint_says_why_in_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    path = latest_checkpoint(run)
    path.write_bytes(b"")
    rc, err = sample(capsys, run, tmp_path / "o")
    assert rc == 2 and err.strip().endswith(
        f"{path} is not a loadable blurdiff checkpoint: the file is empty (0 bytes)"
    )

    torch.save({"step": 1, "config": argparse.Namespace(x=1)}, path)  # what a pickle of any object looks like
    rc, err = sample(capsys, run, tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1, err
    assert (
        "it holds a Python object (argparse.Namespace), which no checkpoint does; not loaded: that could run code"
        in err
    )
    assert "weights_only" not in err  # torch's advice to load it with weights_only=False: it would run the file's code
