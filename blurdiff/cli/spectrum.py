"""``blurdiff spectrum``: the radial power spectrum of samples against data, as a table and a plot."""

from __future__ import annotations

import argparse

from blurdiff.atomic import writable_target
from blurdiff.spectrum import plot_spectra, spectrum_report

HELP = "radially averaged power spectrum of samples against data (no weights)"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="folder of generated images")
    p.add_argument("--data", required=True, help="folder of real images (see `blurdiff data export`)")
    p.add_argument("--out", default=None, help="PNG plot to write")
    p.add_argument("--limit", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    if args.out:
        writable_target(args.out)  # refused before the work, not after
    report = spectrum_report(args.samples, args.data, limit=args.limit)
    print(f"{report['n_samples']} samples, {report['n_data']} data images")
    print("radius  log10(samples/data)")
    for f, r in zip(report["frequencies"], report["log10_ratio"]):
        print(f"{f:6.0f}  {r:+.3f}")
    print(f"mean |log10 ratio| over the upper half of frequencies: {report['high_freq_mean_abs_log10_ratio']:.4f}")
    if args.out:
        freq = report["frequencies"]
        plot_spectra({"samples": (freq, report["power_samples"]), "data": (freq, report["power_data"])}, args.out)
        print(f"plot: {args.out}")
    return 0
