"""``--set SECTION.FIELD=VALUE`` and ``--config FILE``: parsing, type checks, the errors, and what a
training run records and refuses with them (blurdiff.settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blurdiff.checkpoint import latest_checkpoint, load_checkpoint
from blurdiff.cli import main as cli
from blurdiff.settings import check_against_run, field_types, parse_settings

RES = 8


def test_every_process_and_network_field_is_settable():
    from blurdiff.diffusion import BlurDiffusion, ProcessConfig
    from blurdiff.unet import UNetConfig

    recorded = set(
        BlurDiffusion(ProcessConfig(resolution=RES, num_timesteps=10)).config.to_dict()
    )  # lee: no family fields
    for family in ("hoogeboom", "rissanen"):
        recorded |= set(ProcessConfig(resolution=RES, num_timesteps=10, basis="dct", family=family).to_dict())
    assert set(field_types("process")) == recorded
    assert set(field_types("unet")) == set(UNetConfig.__dataclass_fields__)


def test_values_are_json_checked_against_the_field_type():
    got = parse_settings(
        [
            "process.f_max=0.3",
            "process.sigma=1",  # an int where a float is wanted: widened
            "process.blur_schedule=log",  # not JSON: a string
            "process.resolution=[8, 16]",
            "unet.model_channels=96",
            "unet.channel_mult=[1,2,2]",
            "unet.use_checkpoint=true",
        ]
    )
    assert got["process"] == {"f_max": 0.3, "sigma": 1.0, "blur_schedule": "log", "resolution": (8, 16)}
    assert isinstance(got["process"]["sigma"], float)
    assert got["unet"] == {"model_channels": 96, "channel_mult": (1, 2, 2), "use_checkpoint": True}


def test_set_wins_over_the_config_file_and_a_sampler_section_is_kept_or_dropped(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"process": {"f_max": 0.2, "num_timesteps": 50}, "sampler": {"steps": 25}}))
    got = parse_settings(["process.f_max=0.3"], path)
    assert got == {"process": {"f_max": 0.3, "num_timesteps": 50}, "unet": {}}  # training: no sampler section
    got = parse_settings([], path, sections=("process", "unet", "sampler"))
    assert got["sampler"] == {"steps": 25}


@pytest.mark.parametrize(
    "assignment, message",
    [
        (
            "process.fmax=0.3",
            "unknown key process.fmax (did you mean process.f_max?); valid process keys: process.basis",
        ),
        ("process.num_timesteps=1.5", "process.num_timesteps must be an integer, got 1.5"),
        ("process.f_max=true", "process.f_max must be a number, got true"),
        ("process.basis=3", "process.basis must be a string, got 3"),
        ("unet.channel_mult=3", "unet.channel_mult must be a list of integers, got 3"),
        ("process.resolution=[8,8,8]", "process.resolution must be an integer or a list of 2 integers, got [8, 8, 8]"),
        ("sampler.steps=25", "unknown section 'sampler' in sampler.steps; valid sections: process, unet"),
        ("process.backend=fused", "unknown key process.backend"),  # how ops run: --backend
        ("f_max=0.3", "the key needs a section (process, unet), e.g. process.f_max"),
        ("process.f_max", "write SECTION.FIELD=VALUE"),
    ],
)
def test_bad_assignments_say_what_is_wrong(assignment, message):
    with pytest.raises(ValueError) as e:
        parse_settings([assignment])
    assert message in str(e.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"proces": {"f_max": 0.3}}', "unknown section(s) ['proces']; valid sections: process, unet, sampler"),
        ('{"process": 0.3}', "expected an object of sections"),
        ('{"unet": {"channels": 8}}', "unknown key unet.channels"),
    ],
)
def test_bad_config_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(ValueError) as e:
        parse_settings([], path)
    assert message in str(e.value) and str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="--config: no such file"):
        parse_settings([], tmp_path / "missing.json")


def test_check_against_run_refuses_another_process():
    config = {"process": {"f_max": 0.14, "resolution": [8, 8]}, "unet": {"channel_mult": [1, 2]}}
    check_against_run({"process": {"f_max": 0.14, "resolution": 8}, "unet": {"channel_mult": (1, 2)}}, config, "x")
    # A preset's (0.15 / 0.4) ** 2 is what the command line calls 0.140625.
    check_against_run({"process": {"f_max": 0.140625}}, {"process": {"f_max": (0.15 / 0.4) ** 2}}, "x")
    with pytest.raises(ValueError, match=r"process.f_max=0.3 differs from the run's 0.14 \(ckpt\)"):
        check_against_run({"process": {"f_max": 0.3}}, config, "ckpt")
    # The paper's process records no family: it is "lee", and no other.
    check_against_run({"process": {"family": "lee", "d_min": 0.001}}, config, "x")
    with pytest.raises(ValueError, match=r"process.family=\"rissanen\" differs from the run's \"lee\""):
        check_against_run({"process": {"family": "rissanen"}}, config, "x")


@pytest.fixture(scope="module")
def data(toy_lmdb_of) -> Path:
    return toy_lmdb_of(8, RES)


def _train(data, out, *extra, final_check=False) -> int:
    argv = ["train", "--data", str(data), "--preset", "toy", "--out", str(out), "--batch-size", "2"]
    argv += ["--device", "cpu", "--no-progress", "--sample-every", "0", *extra]
    if not final_check:
        argv.append("--no-final-check")
    return cli(argv)


def test_training_records_the_settings_and_resume_refuses_others(data, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"process": {"num_timesteps": 20, "f_max": 0.2}, "unet": {"model_channels": 32}}))
    sets = ["--set", "process.resolution=8", "--set", "process.blur_schedule=log", "--set", "process.f_max=0.3"]
    assert _train(data, out, "--max-steps", "1", "--config", str(config), *sets) == 0
    saved = load_checkpoint(latest_checkpoint(out))["config"]
    assert json.loads(json.dumps(saved)) == json.loads((out / "config.json").read_text())
    assert saved["process"]["num_timesteps"] == 20 and saved["process"]["blur_schedule"] == "log"
    assert saved["process"]["f_max"] == 0.3 and tuple(saved["process"]["resolution"]) == (8, 8)
    assert saved["unet"]["model_channels"] == 32 and saved["unet"]["image_size"] == 8

    # Resumed without --set: the run's own settings; with one more that agrees: fine.
    assert _train(data, out, "--max-steps", "2", "--resume") == 0
    assert _train(data, out, "--max-steps", "3", "--resume", "--set", "process.f_max=0.3") == 0
    capsys.readouterr()
    # Another value: refused, naming only what differs.
    assert _train(data, out, "--max-steps", "4", "--resume", "--set", "process.f_max=0.2") == 2
    err = capsys.readouterr().err
    assert "different process" in err and "f_max: run 0.3, now 0.2" in err and "blur_schedule" not in err
    assert load_checkpoint(latest_checkpoint(out))["step"] == 3

    assert _train(data, tmp_path / "bad", "--max-steps", "1", "--set", "unet.model_chanels=8") == 2
    assert "did you mean unet.model_channels?" in capsys.readouterr().err


def test_sampling_takes_a_sampler_section_and_checks_the_rest_against_the_run(data, tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["--set", "process.num_timesteps=20", "--set", "process.resolution=8", "--set", "unet.model_channels=32"]
    assert _train(data, run, "--max-steps", "1", *sets) == 0
    # The final check samples with all 20 steps when the process has fewer than its usual 50.
    assert _train(data, run, "--max-steps", "2", "--resume", final_check=True) == 0
    assert "EMA samples (ancestral, 20 steps)" in capsys.readouterr().out
    config = tmp_path / "experiment.json"  # what trained the run, and how to sample it
    config.write_text(json.dumps({"process": {"num_timesteps": 20}, "sampler": {"name": "ancestral", "steps": 5}}))
    sample = ["sample", "--run", str(run), "--n", "2", "--batch-size", "2", "--device", "cpu", "--quiet"]
    capsys.readouterr()
    assert cli([*sample, "--out", str(tmp_path / "a"), "--config", str(config)]) == 0
    assert "ancestral sampler, 5/20 steps" in capsys.readouterr().out
    recorded = json.loads((tmp_path / "a" / "sample.json").read_text())
    assert (recorded["sampler"], recorded["steps"]) == ("ancestral", 5)
    # The same images as the options say it.
    assert cli([*sample, "--out", str(tmp_path / "b"), "--sampler", "ancestral", "--steps", "5"]) == 0
    for name in ("000000.png", "000001.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    for extra, message in [
        (["--set", "process.num_timesteps=30"], "process.num_timesteps=30 differs from the run's 20"),
        (["--set", "unet.model_channels=64"], "unet.model_channels=64 differs from the run's 32"),
        (["--config", str(config), "--steps", "6"], "--steps 6 and sampler.steps=5 disagree"),
        (["--set", "sampler.name=euler"], "sampler must be one of"),
        (["--set", "sampler.stpes=5"], "unknown key sampler.stpes (did you mean sampler.steps?)"),
    ]:
        assert cli([*sample, "--out", str(tmp_path / "c"), *extra]) == 2
        assert message in capsys.readouterr().err, extra
