"""The demo's recipe over several training seeds and thread counts, each run scored by the yardstick.

    python scripts/recipe_check.py --out out/recipe [--seeds 0 1 2 3 4] [--threads 1 2] [--steps 2500]
        [--jobs 2] [--eval-n 256] [--sampler ancestral2m]

For every (seed, threads): trains the `toy` preset exactly as scripts/demo.sh does (same data, same
options, ``--seed`` the training seed) with that many threads, samples ``--eval-n`` images with ``--sampler`` at
50 steps (default: the demo's, ``ancestral2m``), and scores them with ``blurdiff eval`` against held-out data.
Prints a Markdown table (seed, threads, final loss, the run's health line, SWD, spectrum error,
std, out-of-range fraction, verdict) with the data's own noise floor. Resumes: finished runs,
samples and reports are reused (per sampler: ``samples-KIND/``,
``eval-KIND.json``). ``--jobs`` runs that many at once (use it with one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _run(cmd, env, log):
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def one(args, seed: int, threads: int) -> dict:
    cli = [sys.executable, "-m", "blurdiff"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = Path(args.out)
    d = out / f"seed{seed}-threads{threads}"
    d.mkdir(parents=True, exist_ok=True)
    log = d / "log.txt"
    _run(
        cli
        + [
            "train",
            "--data",
            str(out / "data"),
            "--preset",
            "toy",
            "--out",
            str(d / "run"),
            "--max-steps",
            str(args.steps),
            "--device",
            "cpu",
            "--ckpt-every",
            "200",
            "--sample-every",
            "0",
            "--seed",
            str(seed),
            "--resume",
            "--no-progress",
        ],
        env,
        log,
    )
    _run(
        cli
        + [
            "sample",
            "--run",
            str(d / "run"),
            "--n",
            str(args.eval_n),
            "--out",
            str(d / f"samples-{args.sampler}"),
            "--steps",
            "50",
            "--sampler",
            args.sampler,
            "--seed",
            "0",
            "--device",
            "cpu",
            "--batch-size",
            "128",
            "--quiet",
        ],
        env,
        log,
    )
    _run(
        cli
        + [
            "eval",
            "--samples",
            str(d / f"samples-{args.sampler}"),
            "--data",
            str(out / "heldout"),
            "--json",
            str(d / f"eval-{args.sampler}.json"),
        ],
        env,
        log,
    )
    report = json.loads((d / f"eval-{args.sampler}.json").read_text())
    lines = [json.loads(x) for x in (d / "run" / "metrics.jsonl").read_text().splitlines()]
    end = [m for m in lines if m.get("event") == "end"][-1]
    final_loss = [m for m in lines if "loss" in m][-1]["loss"]
    spikes = sum(1 for m in lines if m.get("event") == "spike")
    return {
        "seed": seed,
        "threads": threads,
        "final_loss": final_loss,
        "healthy": end["healthy"],
        "spikes": spikes,
        "report": report,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--eval-n", type=int, default=256)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument(
        "--sampler", default="ancestral2m", help="the sampler scored, at 50 steps (blurdiff sample --sampler)"
    )
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "blurdiff"]
    if not (out / "data" / "data.mdb").exists():
        subprocess.run(
            cli + ["data", "toy", "--out", str(out / "data"), "--n", "2000", "--size", "32", "--seed", "0"], check=True
        )
    if not (out / "heldout" / "data.mdb").exists():
        subprocess.run(
            cli
            + [
                "data",
                "toy",
                "--out",
                str(out / "heldout"),
                "--n",
                str(2 * args.eval_n),
                "--size",
                "32",
                "--seed",
                "1",
            ],
            check=True,
        )
    cells = [(s, t) for t in args.threads for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: one(args, *c), cells))
    print(f"{args.sampler}, 50 steps, {args.eval_n} samples per run")
    print(
        "| seed | threads | final loss | healthy (spikes) | SWD avg (x1e3) | spectrum error | std | "
        "outside [-1, 1] | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m, raw = r["report"]["metrics"], r["report"]["raw"]
        print(
            f"| {r['seed']} | {r['threads']} | {r['final_loss']:.4f} | {'yes' if r['healthy'] else 'NO'} "
            f"({r['spikes']}) | {m['swd_avg']['samples']:.1f} | {m['spectrum_error']['samples']:.3f} | "
            f"{raw['overall_std']:.3f} | {100 * m['outside_1']['samples']:.2f}% | {r['report']['verdict']} |"
        )
    floor = results[0]["report"]
    fm = floor["metrics"]
    data_std = (sum(s * s for s in floor["channels"]["reference"]["std"]) / 3) ** 0.5
    print(
        f"| data (noise floor) | | | | {fm['swd_avg']['floor']:.1f} | {fm['spectrum_error']['floor']:.3f} | "
        f"{data_std:.3f} | 0.00% | |"
    )
    (out / f"table-{args.sampler}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
