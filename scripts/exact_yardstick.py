"""The exact yardstick of every sampler: Gaussian data diagonal in the basis, no network, no Monte Carlo.

    python scripts/exact_yardstick.py [--resolution 64] [--presets lsun64-quartic lsun64-log lsun64-noblur]
        [--steps 10 25 50 100 250 1000] [--reference estimate|flat|exact] [--data LMDB] [--json out.json]

The data is N(0, diag(v)) with v the power-law spectrum 1/(1 + |k|²) scaled to a pixel variance
of 0.25 (blurdiff.gaussian_yardstick.power_law_spectrum), or the spectrum measured from ``--data``. Every
sampler at every K is driven by the exact score; its output is Gaussian with a variance per
frequency computed exactly (blurdiff.gaussian_yardstick.output_variance), and the table gives its
2-Wasserstein distance and KL divergence to the data, in total and per radial frequency band.
The integrators' Gaussian reference is, by default, what a trainer measures (``estimate``: the
spectrum from 512 images, 3.6 % noise per frequency); ``flat`` is an older checkpoint's (v = 1),
``exact`` the data's own (then the integrators are exact, up to the prior).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings

import torch

from blurdiff import BlurDiffusion
from blurdiff.gaussian_yardstick import BANDS, evaluate_samplers, power_law_spectrum, reference_estimate
from blurdiff.presets import get_preset
from blurdiff.quality import load_data_images
from blurdiff.samplers import SAMPLERS
from blurdiff.statistics import estimate_data_statistics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--presets", nargs="+", default=["lsun64-quartic", "lsun64-log", "lsun64-noblur"])
    p.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100, 250, 1000])
    p.add_argument("--reference", choices=("estimate", "flat", "exact"), default="estimate")
    p.add_argument(
        "--data", default=None, help="measure v from this data set (lmdb or folder) instead of the power law"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    warnings.simplefilter("ignore")  # the flat reference warns; the table says it
    res = (args.resolution, args.resolution)
    out = {}
    for name in args.presets:
        process = BlurDiffusion(dataclasses.replace(get_preset(name).process, resolution=args.resolution))
        if args.data:
            images = load_data_images(args.data, res, 1024, exact=False)
            v = estimate_data_statistics(process, images.split(64)).reference_var
        else:
            v = power_law_spectrum(res)
        ref = {"estimate": reference_estimate(v, 512), "flat": torch.ones_like(v), "exact": v}[args.reference]
        rows = evaluate_samplers(process, v, args.samplers, args.steps, reference=ref)
        out[name] = rows
        print(
            f"\n{name} at {res[0]}x{res[1]}, reference: {args.reference}; 2-Wasserstein distance (total, then "
            f"per band from coarse to fine) and KL to the data"
        )
        print("| sampler | K | W2 | " + " | ".join(f"W2 band {b + 1}" for b in range(BANDS)) + " | KL | var ratio |")
        print("|---|---|---|" + "---|" * BANDS + "---|---|")
        for r in rows:
            bands = " | ".join(f"{b['w2']:.3g}" for b in r["bands"])
            print(
                f"| {r['sampler']} | {r['K']} | {r['w2']:.3g} | {bands} | {r['kl']:.3g} | "
                f"{r['var_ratio_min']:.3f} – {r['var_ratio_max']:.3f} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
