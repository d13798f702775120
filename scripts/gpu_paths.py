"""The CUDA paths of the spectral map timed against their estimates (scripts/gpu_check.sh).

    python scripts/gpu_paths.py [--static-json PATH] [--repeats N]

On the visible GPU, q_sample (spectral_lincomb of K = 2 inputs, x0 and the given noise, float32,
the Gaussian basis's even/odd halves) at each shape of SHAPES, forced to the fused kernel (one
block per plane), to the split fused kernel (several blocks per plane, two launches) and to the
GEMM path in turn (blurdiff_ops.testing.map_path), timed with CUDA events (the median of
--repeats calls after warm-up). Beside each time: the cost model's estimate for this device
(csrc/path_cost.h through blurdiff_ops::_path_costs, the numbers that choose the path), which
path it chooses, and for the shapes the static report covers, its lower bounds for this GPU's
architecture (--static-json: the JSON of scripts/gpu_static_report.py). A shape whose fused plan
does not fit the device's shared memory says so in the fused column.
"""

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

SHAPES = [(16, 32), (16, 64), (256, 64), (16, 128)]
K = 2  # inputs of q_sample: x0 and the noise
REPORT_GPUS = {7: "V100", 8: "A100", 9: "H100 SXM"}  # gpu_static_report.py's, by compute capability


PATHS = ("fused", "split", "gemm")


def estimate(props, batch, n, sides="even_odd"):
    """The cost model's ({path: µs}, blocks per SM, split blocks per plane, the path it chooses) for
    q_sample on a device with these properties (torch.cuda.get_device_properties or any object
    with the same fields)."""
    fused, gemm, blocks, _, split, bands, chosen = torch.ops.blurdiff_ops._path_costs(
        props.major,
        props.multi_processor_count,
        props.shared_memory_per_block_optin,
        props.shared_memory_per_multiprocessor,
        batch * 3,
        n,
        n,
        sides,
        4,
        4,
        K,
        1,
        0,
        True,
        True,
    )
    return {"fused": fused, "split": split, "gemm": gemm}, int(blocks), int(bands), PATHS[int(chosen) - 1]


def static_bounds(report, props, batch, n):
    """The static report's (fused ≥, GEMM path) µs for this architecture and shape, or None."""
    if report is None:
        return None
    gpu = REPORT_GPUS.get(min(props.major, 9))
    for row in report.get("q_sample", []):
        if row["gpu"] == gpu and row["shape"] == f"{batch}x3x{n}x{n}":
            return row.get("fused_us"), row.get("gemm_path_us")
    return None


def cell(x):
    return "–" if x is None else f"{x:.1f}"


def table(rows):
    """Markdown of the rows: (shape, estimate(), static bounds or None, measured {path: µs or a
    reason})."""
    out = [
        "| shape | fused measured | fused estimate | static fused ≥ | split measured | split estimate (bands) "
        "| GEMM measured | GEMM estimate | static GEMM | chosen | fastest measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, (est, blocks, bands, chosen), bounds, measured in rows:
        timed = {k: v for k, v in measured.items() if isinstance(v, float)}
        fastest = min(timed, key=timed.get) if len(timed) == len(PATHS) else "–"
        shown = {p: cell(v) if isinstance(v, float) or v is None else v for p in PATHS for v in [measured.get(p)]}
        s_fused, s_gemm = bounds if bounds else (None, None)
        fits = blocks > 0
        split_est = f"{cell(est['split'])} ({bands})" if fits else "does not fit"
        out.append(
            f"| {shape} | {shown['fused']} | {cell(est['fused']) if fits else 'does not fit'} | {cell(s_fused)} "
            f"| {shown['split']} | {split_est} "
            f"| {shown['gemm']} | {cell(est['gemm'])} | {cell(s_gemm)} | {chosen} | {fastest} |"
        )
    return "\n".join(out)


def time_call(fn, repeats):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--static-json", type=Path, help="the JSON of scripts/gpu_static_report.py")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args(argv)
    import blurdiff_ops
    from blurdiff import BlurDiffusion, ProcessConfig
    from blurdiff_ops.testing import map_path

    if not (torch.cuda.is_available() and blurdiff_ops.kernels_available("cuda")):
        print("gpu_paths: needs a GPU and the CUDA kernels", file=sys.stderr)
        return 2
    report = json.loads(args.static_json.read_text()) if args.static_json and args.static_json.is_file() else None
    props = torch.cuda.get_device_properties(0)
    rows = []
    for batch, n in SHAPES:
        proc = BlurDiffusion(ProcessConfig(n))
        g = torch.Generator("cuda").manual_seed(0)
        x0 = torch.randn(batch, 3, n, n, device="cuda", generator=g)
        eps = torch.randn(batch, 3, n, n, device="cuda", generator=g)
        t = torch.randint(1, proc.num_timesteps + 1, (batch,), device="cuda", generator=g)
        call = functools.partial(proc.q_sample, x0, t, eps)
        measured = {}
        for path in PATHS:
            with map_path(path):
                try:
                    measured[path] = time_call(call, args.repeats)
                except ValueError as e:  # a fused plan larger than the device allows
                    measured[path] = "does not fit" if "shared memory" in str(e) else f"error: {e}"
        rows.append((f"{batch}x3x{n}x{n}", estimate(props, batch, n), static_bounds(report, props, batch, n), measured))
    print(f"q_sample, float32, µs ({props.name}, {props.multi_processor_count} SMs, sm_{props.major}{props.minor}):")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
