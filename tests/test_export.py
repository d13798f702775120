"""``blurdiff export`` (blurdiff/export.py) and sampling an export (``blurdiff sample --export``).

Runs are made here as in tests/helpers.py: one checkpoint of a tiny UNet at 16x16 with random
weights and a 20-step process. The ``residual`` run has what a trained run of today has (data
statistics, an ``eps_residual`` network); the ``plain`` run has neither, like older runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PROCESS, RES, tiny_weights  # the tiny run of the sampling tests
from safetensors import safe_open
from safetensors.torch import save_file

from blurdiff.atomic import file_sha256
from blurdiff.checkpoint import build_from_checkpoint, checkpoint_path, load_checkpoint, save_checkpoint
from blurdiff.cli import main
from blurdiff.diffusion import ReferenceResidual
from blurdiff.export import export_run, load_export
from blurdiff.output_folders import OutputExistsError
from blurdiff.sample_folder import sample_to_folder
from blurdiff.statistics import DataStatistics
from blurdiff.unet import UNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops (see conftest.one_torch_thread)


def make_run(root: Path, residual: bool) -> Path:
    model, ema = tiny_weights(1), tiny_weights(2)
    config = {"preset": "toy", "process": dict(PROCESS), "unet": dataclasses.asdict(model.config), "train": {}}
    state = {"step": 100, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": {}, "config": config}
    if residual:
        g = torch.Generator().manual_seed(3)
        # Random float64 values: any rounding on the way through JSON would show.
        power = torch.rand(RES, RES, dtype=torch.float64, generator=g) * 0.3 + 1e-3
        stats = DataStatistics(37, [0.1 / 3, -2 / 7, 0.3], [0.5, 1 / 3, 0.7], power)
        state["data_stats"] = stats.to_state()
        config["model_output"] = "eps_residual"
    save_checkpoint(state, checkpoint_path(root, 100))
    return root


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("residual"), residual=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("plain"), residual=False)


def ckpt_of(run: Path) -> Path:
    return checkpoint_path(run, 100)


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("[0-9]*.png"))}


# --------------------------------------------------------------------------- what is written
def test_config_round_trip_and_exact_data_statistics(residual, tmp_path):
    result = export_run(run=residual, out=tmp_path / "e")
    assert result.files == (tmp_path / "e" / "model.safetensors", tmp_path / "e" / "config.json")
    assert (result.checkpoint, result.step, result.ema, result.format) == (ckpt_of(residual), 100, True, "blurdiff")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["config.json", "model.safetensors"]  # no leftovers

    state = load_checkpoint(ckpt_of(residual))
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert config["weights"] == "ema" and config["preset"] == "toy" and config["model_output"] == "eps_residual"
    assert config["process"] == PROCESS and config["unet"] == json.loads(json.dumps(state["config"]["unet"]))
    assert config["checkpoint_step"] == 100 and config["checkpoint_sha256"] == file_sha256(ckpt_of(residual))
    assert config["weights_sha256"] == file_sha256(tmp_path / "e" / "model.safetensors")

    process, model = load_export(tmp_path / "e")
    ref_process, ref_model = build_from_checkpoint(state)
    assert isinstance(model, ReferenceResidual) and type(model) is type(ref_model)
    assert process.config == ref_process.config
    stats, ref = process.data_stats, ref_process.data_stats
    assert stats.spectral_power.dtype == torch.float64
    assert torch.equal(stats.spectral_power, ref.spectral_power)  # bit for bit through JSON
    assert (stats.count, stats.channel_mean, stats.channel_std) == (ref.count, ref.channel_mean, ref.channel_std)
    assert model.process is process  # the wrapper uses the export's own statistics
    exported = model.net.state_dict()
    assert exported.keys() == state["ema"].keys()
    assert all(t.dtype == state["ema"][k].dtype and torch.equal(t, state["ema"][k]) for k, t in exported.items())
    assert not model.training


def test_raw_weights_and_a_run_without_statistics(plain, tmp_path):
    export_run(run=plain, out=tmp_path / "e", ema=False)
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert config["weights"] == "model" and config["data_stats"] is None and config["model_output"] == "eps"
    with safe_open(str(tmp_path / "e" / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "blurdiff-export", "weights": "model"}
    process, model = load_export(tmp_path / "e")
    state = load_checkpoint(ckpt_of(plain))
    assert type(model) is UNet and process.data_stats is None
    assert all(torch.equal(t, state["model"][k]) for k, t in model.state_dict().items())


def test_export_files_share_one_mode(plain, tmp_path):
    before = os.umask(0o022)
    try:
        export_run(run=plain, out=tmp_path / "e")
    finally:
        os.umask(before)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "e").iterdir()}
    assert modes == {0o644}  # not model.safetensors 0600, as safetensors creates its file


# --------------------------------------------------------------------------- the same samples
@pytest.mark.parametrize("ema", [True, False], ids=["ema", "raw"])
def test_an_export_samples_bitwise_like_its_checkpoint(residual, tmp_path, ema):
    export_run(run=residual, out=tmp_path / "e", ema=ema)
    # The Python API: the pair load_export builds and the pair build_from_checkpoint builds.
    process, model = load_export(tmp_path / "e")
    ref_process, ref_model = build_from_checkpoint(load_checkpoint(ckpt_of(residual)), use_ema=ema)
    for kind, steps in (("ddpm", None), ("ancestral2m", 5)):  # the few-step one uses the data statistics
        with torch.no_grad():
            got = process.sample(model, (2, 3, RES, RES), generator=torch.Generator().manual_seed(7), steps=steps)
            want = ref_process.sample(
                ref_model, (2, 3, RES, RES), generator=torch.Generator().manual_seed(7), steps=steps
            )
        assert torch.equal(got, want), kind

    # The folders: the same PNG files and the same npz, the same settings recorded.
    common = dict(n=6, batch_size=3, seed=5, quiet=True, npz=True)
    a = sample_to_folder(run=residual, out=tmp_path / "ckpt", ema=ema, **common)
    b = sample_to_folder(export=tmp_path / "e", out=tmp_path / "export", **common)
    assert b.plan.export and b.plan.checkpoint == tmp_path / "e" and b.plan.ema is ema
    assert b.plan.checkpoint_step == a.plan.checkpoint_step == 100
    assert pngs(tmp_path / "export") == pngs(tmp_path / "ckpt") and len(pngs(tmp_path / "ckpt")) == 6
    assert np.array_equal(np.load(a.npz)["arr_0"], np.load(b.npz)["arr_0"])
    assert (tmp_path / "export" / "sample.json").read_text() == (tmp_path / "ckpt" / "sample.json").read_text()


def test_a_folder_begun_from_the_checkpoint_continues_from_its_export(residual, tmp_path):
    export_run(run=residual, out=tmp_path / "e")
    common = dict(batch_size=3, quiet=True)
    sample_to_folder(run=residual, n=3, out=tmp_path / "mixed", **common)
    report = sample_to_folder(export=tmp_path / "e", n=6, out=tmp_path / "mixed", **common)
    assert report.plan.present == 3 and report.written == 3
    sample_to_folder(run=residual, n=6, out=tmp_path / "whole", **common)
    assert pngs(tmp_path / "mixed") == pngs(tmp_path / "whole")


# --------------------------------------------------------------------------- refusals
def test_refuses_a_folder_that_is_not_an_export(plain, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty and is not a blurdiff export") as e:
        export_run(run=plain, out=out, overwrite=True)
    assert "notes.txt" in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        export_run(run=plain, out=tmp_path / "file")
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        export_run(run=plain, out=tmp_path / "e", format="onnx")
    assert not (tmp_path / "e").exists()


def test_an_earlier_export_is_replaced_only_when_asked(plain, tmp_path):
    out = tmp_path / "e"
    export_run(run=plain, out=out)
    with pytest.raises(OutputExistsError, match="already holds an export .* pass overwrite=True"):
        export_run(run=plain, out=out, ema=False)
    assert json.loads((out / "config.json").read_text())["weights"] == "ema"
    export_run(run=plain, out=out, ema=False, overwrite=True)
    assert json.loads((out / "config.json").read_text())["weights"] == "model"
    load_export(out)
    # An export interrupted before its config was written is known by its weights' header.
    (out / "config.json").unlink()
    export_run(run=plain, out=out, overwrite=True)
    load_export(out)
    # Files of someone else's beside an export are never replaced with it.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="files blurdiff did not write \\(notes.txt\\)"):
        export_run(run=plain, out=out, overwrite=True)


def test_refuses_weights_that_are_not_finite(plain, tmp_path):
    state = load_checkpoint(ckpt_of(plain))
    name = next(iter(state["ema"]))
    state["ema"][name] = torch.full_like(state["ema"][name], float("nan"))
    bad = save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: the ema weights are not finite"):
        export_run(ckpt=bad, out=tmp_path / "e")
    assert not (tmp_path / "e").exists()
    export_run(ckpt=bad, out=tmp_path / "e", ema=False)  # the raw weights are fine


# --------------------------------------------------------------------------- loading checks
def _rewrite_weights(folder: Path, weights: dict[str, torch.Tensor] | bytes) -> Path:
    """Replace the export's weights and record their hash, as a hand-made export would."""
    path = folder / "model.safetensors"
    if isinstance(weights, bytes):
        path.write_bytes(weights)
    else:
        save_file(weights, str(path))
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = file_sha256(path)
    (folder / "config.json").write_text(json.dumps(config))
    return path


def test_load_names_the_file_that_is_wrong(plain, tmp_path):
    out = tmp_path / "e"
    export_run(run=plain, out=out)
    weights = dict(load_export(out)[1].state_dict())
    path = out / "model.safetensors"

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_export(tmp_path / "nope")
    path.rename(tmp_path / "aside")
    with pytest.raises(ValueError, match=f"{path} is missing"):
        load_export(out)
    (tmp_path / "aside").rename(path)

    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")  # damaged on disk
    with pytest.raises(ValueError, match=f"{path} does not match the weights_sha256"):
        load_export(out)

    first, *_ = weights
    renamed = {("renamed." + k if k == first else k): v for k, v in weights.items()}
    _rewrite_weights(out, renamed)
    with pytest.raises(ValueError, match=f"{path}: the weights do not fit the network its config describes") as e:
        load_export(out)
    assert f"1 missing (first {first}), 1 unexpected (first renamed.{first}) keys" in str(e.value)

    _rewrite_weights(out, {**weights, first: torch.full_like(weights[first], float("inf"))})
    with pytest.raises(ValueError, match=f"{path}: the weights are not finite .* first {first}"):
        load_export(out)

    _rewrite_weights(out, {**weights, first: weights[first][..., :1].contiguous()})
    with pytest.raises(ValueError, match=f"{path}: the weights do not fit the network"):
        load_export(out)

    _rewrite_weights(out, b"not a safetensors file")
    with pytest.raises(ValueError, match=f"{path} is not a readable safetensors file"):
        load_export(out)

    config = out / "config.json"
    config.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match=f"{config} is not the config of a blurdiff export"):
        load_export(out)
    config.write_text("{not json")
    with pytest.raises(ValueError, match=f"{config} is not valid JSON"):
        load_export(out)
    config.unlink()
    with pytest.raises(ValueError, match=f"{config} is missing"):
        load_export(out)


# --------------------------------------------------------------------------- diffusers
def test_diffusers_format_is_the_pipelines_save_pretrained(residual, tmp_path, capsys):
    pytest.importorskip("diffusers")
    from blurdiff.diffusers_pipeline import BlurDiffusionPipeline

    out = tmp_path / "d"
    capsys.readouterr()
    assert main(["export", "--run", str(residual), "--out", str(out), "--format", "diffusers"]) == 0
    printed = capsys.readouterr().out
    assert "(diffusers format)" in printed and f"  {out / 'model_index.json'}\n" in printed
    assert {"model_index.json", "unet", "scheduler"} <= {p.name for p in out.iterdir()}
    pipe = BlurDiffusionPipeline.from_pretrained(str(out))
    ema = load_checkpoint(ckpt_of(residual))["ema"]
    net = pipe.unet.net.state_dict()
    assert net.keys() == ema.keys() and all(torch.equal(net[k], ema[k]) for k in ema)
    assert main(["export", "--run", str(residual), "--out", str(out), "--format", "diffusers"]) == 2
    assert "already holds a diffusers export; pass --overwrite" in capsys.readouterr().err
    assert main(["export", "--run", str(residual), "--out", str(out), "--format", "diffusers", "--overwrite"]) == 0
    with pytest.raises(ValueError, match="is a diffusers export .*BlurDiffusionPipeline.from_pretrained"):
        load_export(out)


# --------------------------------------------------------------------------- the command line
def test_cli_export_then_sample_the_export(residual, tmp_path, capsys):
    out = tmp_path / "e"
    capsys.readouterr()
    assert main(["export", "--run", str(residual), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"  {out / 'model.safetensors'}\n" in printed and f"  {out / 'config.json'}\n" in printed
    assert "step 100, EMA weights" in printed

    assert main(["export", "--run", str(residual), "--out", str(out), "--no-ema"]) == 2
    assert f"{out} already holds an export (blurdiff export); pass --overwrite" in capsys.readouterr().err

    common = ["--n", "4", "--batch-size", "2", "--quiet", "--npz"]
    assert main(["sample", "--export", str(out), "--out", str(tmp_path / "s"), *common]) == 0
    printed = capsys.readouterr().out
    assert f"{out} (export): step 100, EMA weights" in printed
    assert f"npz: {tmp_path / 's' / f'samples_4x{RES}x{RES}x3.npz'}" in printed
    assert main(["sample", "--run", str(residual), "--out", str(tmp_path / "c"), *common]) == 0
    assert pngs(tmp_path / "s") == pngs(tmp_path / "c") and len(pngs(tmp_path / "s")) == 4

    capsys.readouterr()
    assert main(["sample", "--export", str(out), "--run", str(residual), "--out", str(tmp_path / "x"), *common]) == 2
    assert "give --export DIR or --run RUN/--ckpt FILE, not both" in capsys.readouterr().err
    assert main(["sample", "--export", str(out), "--no-ema", "--out", str(tmp_path / "x"), *common]) == 2
    assert f"{out} holds the EMA weights only, not the raw ones; drop --no-ema" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
