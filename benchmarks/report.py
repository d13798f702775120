"""Turn a pytest-benchmark JSON file of bench_ops.py into the README's table of ratios.

    python benchmarks/report.py out.json [--stat min]

Medians by default; on a shared, noisy machine the minimum of the rounds is the steadier
estimate of what the code costs (interference only ever adds time).
"""

import argparse
import json
from collections import defaultdict


def main(path: str, stat: str = "median") -> None:
    data = json.load(open(path))
    table = defaultdict(dict)
    info = {}
    for b in data["benchmarks"]:
        impl = b["params"]["impl"]
        table[b["group"]][impl] = b["stats"][stat] * 1e3
        if impl == "fused":
            info[b["group"]] = b.get("extra_info", {})
    machine = data.get("machine_info", {})
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
          f"{machine.get('cpu', {}).get('count', '?')} logical CPUs; {stat} times in ms; ratios from this one run.\n")
    print("| device | op | shape | fused ms | reference / fused | compiled / fused | fused / GEMM bound | note |")
    print("|---|---|---|---|---|---|---|---|")
    for group in sorted(table, key=lambda g: (g.split()[0], g.split()[1], int(g.split()[2].split("x")[-1]), g)):
        device, op, shape = group.split()
        row = table[group]
        fused = row.get("fused")
        ratio = lambda k: f"{row[k] / fused:.2f}x" if k in row and fused else "-"  # noqa: E731
        gemm = f"{fused / row['gemm']:.2f}x" if "gemm" in row and fused else "-"
        note = ""
        if "bytes_moved" in info.get(group, {}):
            gbps = info[group]["bytes_moved"] / (fused * 1e-3) / 1e9
            note = f"{gbps:.0f} GB/s on {info[group].get('device', '')}"
        print(f"| {device} | {op} | {shape} | {fused:.3f} | {ratio('reference')} | {ratio('compiled')} | {gemm} | {note} |"
              if fused else f"| {device} | {op} | {shape} | - | | | | |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark's --benchmark-json output of bench_ops.py")
    parser.add_argument("--stat", choices=("median", "min"), default="median")
    args = parser.parse_args()
    main(args.json, args.stat)
