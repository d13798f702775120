"""The spectral check of issue 5 for several step counts: sample a trained run with K kept steps
and compare the radially averaged power spectrum of the samples with the data's.

    python scripts/spectral_check.py --run RUN --data DATA [--steps 50 100 250 1000] [--n 128]
        [--sampler ancestral] [--plot spectra.png]

Prints a Markdown table: per K, the seconds it took, the mean |log10(sample power / data power)|
over the low half of the frequency bins (DC excluded) and over the high half (0: the same power,
0.3: off by a factor 2 on average), and the pixel std of samples and data. Samples stay in memory
(no PNG rounding); the same seed is used for every K.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from blurdiff.checkpoint import build_from_checkpoint, latest_checkpoint, load_checkpoint
from blurdiff.data import open_dataset
from blurdiff.respace import KINDS
from blurdiff.spectrum import plot_spectra, spectrum_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (its newest checkpoint, EMA weights)")
    p.add_argument("--data", required=True, help="the run's data (lmdb or image folder)")
    p.add_argument("--steps", type=int, nargs="+", default=[50, 100, 250, 1000])
    p.add_argument("--n", type=int, default=128, help="samples per K (and data images)")
    p.add_argument("--sampler", choices=KINDS, default="ancestral")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="write the spectra of data and every K to this PNG")
    args = p.parse_args()

    ckpt = latest_checkpoint(args.run)
    if ckpt is None:
        raise SystemExit(f"spectral_check: no checkpoint in {args.run}")
    state = load_checkpoint(ckpt)
    process, model = build_from_checkpoint(state)
    dataset = open_dataset(args.data, process.resolution)
    data = torch.stack([dataset[i] for i in range(min(args.n, len(dataset)))])
    shape = (3, *process.resolution)

    print(f"run {args.run} (step {state['step']}), sampler {args.sampler}, {args.n} samples per K, "
          f"{data.shape[0]} data images, {shape[1]}x{shape[2]}")
    print("| K | seconds | low-half mean abs log10 ratio | high-half mean abs log10 ratio | sample std | data std |")
    print("|---|---|---|---|---|---|")
    curves = {}
    for K in args.steps:
        generator = torch.Generator().manual_seed(args.seed)
        start, parts = time.perf_counter(), []
        with torch.no_grad():
            for first in range(0, args.n, args.batch_size):
                b = min(args.batch_size, args.n - first)
                parts.append(process.sample(model, (b, *shape), generator=generator, steps=K, kind=args.sampler))
        seconds = time.perf_counter() - start
        samples = torch.cat(parts).clamp(-1, 1)
        report = spectrum_report(samples, data)
        freq, ratio = report["frequencies"], report["log10_ratio"]
        low = (freq > 0) & (freq <= freq[-1] / 2)
        print(f"| {K} | {seconds:.0f} | {np.mean(np.abs(ratio[low])):.3f} | "
              f"{report['high_freq_mean_abs_log10_ratio']:.3f} | {samples.std().item():.3f} | {data.std().item():.3f} |",
              flush=True)
        curves.setdefault("data", (freq, report["power_data"]))
        curves[f"K={K}"] = (freq, report["power_samples"])
    if args.plot:
        plot_spectra(curves, args.plot, title=f"radial power spectrum, {args.sampler} sampler")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
