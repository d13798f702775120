"""The benchmark files still run, and report.py turns their output into the README's table.

The smallest CPU shape only: this checks the harness, not the speed (speed targets live in the
benchmarks themselves, never in tests).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import blurdiff_ops

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not blurdiff_ops.kernels_available("cpu"), reason="needs the compiled CPU kernels")
def test_bench_ops_and_report(tmp_path):
    out = tmp_path / "ops.json"
    # The packages this test imported (installed, or an in-place build), for the child pytest.
    site = str(Path(blurdiff_ops.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")])))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "benchmarks" / "bench_ops.py"),
            "-k",
            "cpu and 16x3x32x32",
            "--benchmark-only",
            f"--benchmark-json={out}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(out.read_text())
    paired = [b for b in data["benchmarks"] if "paired" in b["extra_info"]]
    assert {b["params"]["op"] for b in paired} == {"to_spectral", "from_spectral", "q_sample", "reverse_step"}
    for b in paired:
        assert {"reference", "compiled", "dense"} <= b["extra_info"]["paired"].keys()

    for stat in ("median", "min"):
        report = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "report.py"), str(out), "--stat", stat],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"{stat} times in ms" in report
        rows = [line for line in report.splitlines() if line.startswith("| cpu | q_sample | 16x3x32x32")]
        assert len(rows) == 2  # the separate groups and the paired table
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            # fused ms, then reference/fused, compiled/fused, dense/fused and fused/GEMM as ratios
            assert float(cells[3]) > 0 and all(c.endswith("x") and float(c[:-1]) > 0 for c in cells[4:8])
