"""Every sampler at several step counts on one trained run, scored with the quality yardstick.

    python scripts/sampler_table.py --run RUN --data HELDOUT [--ckpt FILE] [--samplers ddpm ancestral ddim]
        [--steps 10 25 50 100 250 1000] [--n 256] [--seeds 0 1 2] [--amp none bf16] [--json table.json]

For every (sampler, K, seed): samples ``--n`` images in memory (no PNG rounding; EMA weights; full
batches of ``--batch-size`` seeded as ``blurdiff sample --seed`` seeds them), times them, and
scores them against ``2n`` held-out data images (blurdiff.quality.evaluate: the data's own noise
floor beside every number). Prints a Markdown table, one row per (sampler, K) with the
mean over seeds (± std when several). ``ddpm`` (Eq. 12) is the paper's small-step sampler: it runs
only with all N steps; every other sampler uses its default spacing of the K steps
(blurdiff.samplers.DEFAULT_SPACING). ``--amp none bf16`` gives each (sampler, K) a row per
precision of the network (``blurdiff sample --amp``), on the same seeds: whether bf16 changes the
scores by more than the seeds do.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import torch

from blurdiff.atomic import write_text_atomic
from blurdiff.devices import AMP_DTYPES, sampling_network
from blurdiff.quality import evaluate, load_data_images
from blurdiff.sample_folder import batch_seed, load_source
from blurdiff.sample_guard import SampleStats
from blurdiff.samplers import SAMPLERS, make_sampler
from blurdiff.statistics import DEFAULT_IMAGES, estimate_data_statistics

COLUMNS = ("swd_avg", "spectrum_error", "channel_std_error")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (its newest checkpoint unless --ckpt)")
    p.add_argument("--ckpt", default=None, help="checkpoint file")
    p.add_argument("--data", required=True, help="held-out data (lmdb or image folder), at least 2n images")
    p.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100, 250, 1000])
    p.add_argument("--n", type=int, default=256, help="samples per (sampler, K, seed)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--amp", nargs="+", choices=sorted(AMP_DTYPES), default=["none"], help="the network's precisions")
    p.add_argument(
        "--json", default=None, help="write every row (and the floor) to this file; resumes from it when it exists"
    )
    p.add_argument(
        "--train-data",
        default=None,
        help="the run's training data, to measure its statistics when the checkpoint predates them",
    )
    args = p.parse_args()

    source = load_source(args.run, args.ckpt, None, None, None, "auto", torch.device("cpu"))
    path, process, model = source.path, source.process, source.model
    if process.data_stats is None and args.train_data:
        process.data_stats = estimate_data_statistics(
            process, load_data_images(args.train_data, process.resolution, DEFAULT_IMAGES, exact=False).split(64)
        )
    data = load_data_images(args.data, process.resolution, 2 * args.n)
    shape, B = (3, *process.resolution), args.batch_size
    print(
        f"{path} (step {source.step}), {args.n} samples per cell, seeds {args.seeds}, "
        f"{torch.get_num_threads()} threads, against {2 * args.n} images of {args.data}\n"
    )
    rows, floor = [], None
    if args.json and os.path.exists(args.json):  # resume: the cells already measured are kept
        with open(args.json) as f:
            done = json.load(f)
        # batch_size: the noise's batches (a table without it drew its noise otherwise, before 0.2)
        same = {"checkpoint": str(path), "n": args.n, "seeds": args.seeds, "batch_size": B}
        if all(done.get(k) == v for k, v in same.items()):
            rows, floor = done["rows"], done["floor"]
    print(_HEADER)
    for row in rows:
        print(_line(row))
    for name, K, amp in ((name, K, amp) for name in args.samplers for K in args.steps for amp in args.amp):
        if (name == "ddpm" and K != process.num_timesteps) or any(
            (r["sampler"], r["K"], r.get("amp", "none")) == (name, K, amp) for r in rows
        ):
            continue
        network = sampling_network(model, amp)
        cells = []
        for seed in args.seeds:
            start, parts, raw = time.perf_counter(), [], SampleStats()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the guard's warnings: the table says it
                sampler = make_sampler(process, K, name)
                for first in range(0, args.n, B):  # full batches (the last one's tail dropped)
                    g = torch.Generator().manual_seed(batch_seed(seed, first, B))
                    x = sampler.sample(network, (B, *shape), generator=g, guard=False)[: args.n - first]
                    raw = raw.merge(SampleStats.of(x))
                    parts.append(x)
            seconds = (time.perf_counter() - start) / args.n
            report = evaluate(torch.cat(parts), data, raw_stats=raw, seed=seed)
            floor = {k: report["metrics"][k]["floor"] for k in COLUMNS}
            cells.append((seconds, report))
        row = {
            "sampler": name,
            "K": K,
            "amp": amp,
            "spacing": sampler.spacing,
            "seconds_per_image": float(np.mean([c[0] for c in cells])),
            "verdicts": [c[1]["verdict"] for c in cells],
            "std": [c[1]["raw"]["overall_std"] for c in cells],
            "beyond_1_5": [c[1]["metrics"]["beyond_1_5"]["samples"] for c in cells],
        }
        for k in COLUMNS:
            row[k] = [c[1]["metrics"][k]["samples"] for c in cells]
        rows.append(row)
        print(_line(row), flush=True)
        if args.json:  # after every cell: an interrupted table resumes
            table = {
                "checkpoint": str(path),
                "step": source.step,
                "n": args.n,
                "seeds": args.seeds,
                "batch_size": B,
            }
            write_text_atomic(args.json, json.dumps(dict(table, floor=floor, rows=rows), indent=2))
    print("\ndata noise floor: " + ", ".join(f"{k} {v:.4g}" for k, v in floor.items()))


def _fmt(values, digits=3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}g}"
    return f"{np.mean(values):.{digits}g} ± {np.std(values):.2g}"


_HEADER = (
    "| sampler | K | amp | SWD avg (x1e3) | spectrum error | channel std error | sample std | beyond ±1.5 | "
    "verdicts | s / image |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _line(row) -> str:
    return (
        f"| {row['sampler']} | {row['K']} | {row.get('amp', 'none')} | {_fmt(row['swd_avg'])} | "
        f"{_fmt(row['spectrum_error'])} | "
        f"{_fmt(row['channel_std_error'])} | {_fmt(row['std'])} | {_fmt([100 * v for v in row['beyond_1_5']])}% | "
        f"{' '.join(row['verdicts'])} | {row['seconds_per_image']:.3f} |"
    )


if __name__ == "__main__":
    main()
