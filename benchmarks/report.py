"""Turn a pytest-benchmark JSON file of bench_ops.py into the README's table of ratios.

    python benchmarks/report.py out.json [--stat min]

Medians by default; on a shared, noisy machine the minimum of the rounds is the steadier
estimate of what the code costs (interference only ever adds time).
"""

import argparse
import json
from collections import defaultdict


def _shape_order(key):
    device, op, shape = key
    return device, op, int(shape.split("x")[-1]), shape


def _table(rows, info) -> None:
    columns = "reference / fused | compiled / fused | dense / fused | fused / GEMM bound"
    print(f"| device | op | shape | fused ms | {columns} | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows, key=_shape_order):
        device, op, shape = key
        row = rows[key]
        fused = row.get("fused")
        if not fused:
            print(f"| {device} | {op} | {shape} | - | | | | | |")
            continue
        gemm = f"{fused / row['gemm']:.2f}x" if "gemm" in row else "-"
        note = ""
        if "bytes_moved" in info.get(key, {}):
            gbps = info[key]["bytes_moved"] / (fused * 1e-3) / 1e9
            note = f"{gbps:.0f} GB/s on {info[key].get('device', '')}"
        ratios = f"{_ratio(row, 'reference')} | {_ratio(row, 'compiled')} | {_ratio(row, 'dense')} | {gemm}"
        print(f"| {device} | {op} | {shape} | {fused:.3f} | {ratios} | {note} |")


def _ratio(row, name: str) -> str:
    return f"{row[name] / row['fused']:.2f}x" if name in row else "-"


def main(path: str, stat: str = "median") -> None:
    data = json.load(open(path))
    separate, paired, info = defaultdict(dict), defaultdict(dict), {}
    for b in data["benchmarks"]:
        key = tuple(b["group"].split()[:3])
        extra = b.get("extra_info", {})
        if "paired" in extra:  # test_paired: the fused op, and the others timed between its rounds
            paired[key]["fused"] = b["stats"][stat] * 1e3
            for impl, stats in extra["paired"].items():
                paired[key][impl] = stats[stat] * 1e3
            continue
        impl = b["params"]["impl"]
        separate[key][impl] = b["stats"][stat] * 1e3
        if impl == "fused":
            info[key] = extra
    machine = data.get("machine_info", {})
    print(
        f"Machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
        f"{machine.get('cpu', {}).get('count', '?')} logical CPUs; {stat} times in ms; ratios from this one run.\n"
    )
    if separate:
        print("Each implementation timed in a group of its own:\n")
        _table(separate, info)
    if paired:
        print("\nPaired: the other implementations timed between the fused op's rounds, in the same seconds:\n")
        _table(paired, {})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark's --benchmark-json output of bench_ops.py")
    parser.add_argument("--stat", choices=("median", "min"), default="median")
    args = parser.parse_args()
    main(args.json, args.stat)
