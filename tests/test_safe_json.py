"""Deeply nested JSON (a hostile file of thousands of ``[``) is malformed input for every JSON
blurdiff reads: a one-line error naming the file, or the line skipped where a torn line is."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from blurdiff.cli import main
from blurdiff.export import is_export, read_export_config
from blurdiff.run_folder import check_run_folder
from blurdiff.safe_json import MAX_DEPTH, JSONTooDeepError, loads
from blurdiff.sample_folder import _check_settings, _RawStats
from blurdiff.train_log import MetricsLog

DEEP = "[" * 5000 + "]" * 5000
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def in_object(value: str, key: str = "a") -> str:
    return '{"' + key + '": ' + value + "}"


def run(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return rc, err.strip()


def test_depth_limit():
    assert loads(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))
    assert loads(in_object(nested(MAX_DEPTH - 1)))["a"] == json.loads(nested(MAX_DEPTH - 1))
    for text in (nested(MAX_DEPTH + 1), in_object(nested(MAX_DEPTH)), DEEP, DEEP.encode()):
        with pytest.raises(JSONTooDeepError) as info:
            loads(text)
        assert isinstance(info.value, ValueError) and str(info.value) == TOO_DEEP


def test_config_and_set(tmp_path, capsys):
    config = tmp_path / "deep.json"
    config.write_text(in_object(DEEP, "process"))
    argv = ["train", "--data", tmp_path, "--preset", "toy", "--out", tmp_path / "run", "--max-steps", 1]
    rc, err = run(capsys, *argv, "--config", config)
    assert rc == 2 and err == f"blurdiff train: error: --config {config}: not valid JSON ({TOO_DEEP})"
    rc, err = run(capsys, *argv, "--set", "process.f_max=" + DEEP)
    assert rc == 2 and err == f"blurdiff train: error: --set process.f_max: the value is {TOO_DEEP}"
    assert not (tmp_path / "run").exists()


def test_export_config(tmp_path, capsys):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text(DEEP)
    assert not is_export(folder)
    with pytest.raises(ValueError, match="config.json is not valid JSON \\(nested more than 100 levels deep\\)"):
        read_export_config(folder)
    rc, err = run(capsys, "sample", "--export", folder, "--out", tmp_path / "s", "--n", 1)
    assert rc == 2 and str(folder / "config.json") in err and "nested more than 100 levels" in err


def test_sample_folder_files(tmp_path):
    (tmp_path / "sample.json").write_text(DEEP)
    (tmp_path / "000000.png").write_bytes(b"")  # a ledger binds (and is read) once the folder holds an image
    with pytest.raises(ValueError, match="sample.json is unreadable \\(nested more than 100 levels deep\\)"):
        _check_settings(tmp_path, {"seed": 0})
    good = json.dumps({"batch": 0, "stats": {"count": 1}})
    (tmp_path / "raw.jsonl").write_text(DEEP + "\n" + good + "\n")
    assert list(_RawStats(tmp_path / "raw.jsonl").batches) == [0]  # the deep line skipped like a torn one


def test_stats_json_of_eval(tmp_path, capsys):
    samples, data = tmp_path / "samples", tmp_path / "data"
    for folder, n in ((samples, 16), (data, 32)):
        folder.mkdir()
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 7 % 256, 0, 0)).save(folder / f"{i:06d}.png")
    (samples / "stats.json").write_text(in_object(DEEP, "raw"))
    rc, err = run(capsys, "eval", "--samples", samples, "--data", data)
    assert rc == 2 and err.startswith(f"blurdiff eval: error: {samples / 'stats.json'} is unreadable (nested")


def test_run_folder_files(tmp_path):
    (tmp_path / "config.json").write_text(DEEP)
    with pytest.raises(FileExistsError, match="is not a blurdiff run"):
        check_run_folder(tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n' + DEEP + "\n" + '{"step": 3}\n')
    MetricsLog(metrics).truncate(2)
    assert metrics.read_text() == '{"step": 1}\n'
