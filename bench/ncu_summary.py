"""Sums an `ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum` log by kernel, over
one engine step: from the first `embedding` launch to the next (or the end of the log).

    python bench/ncu_summary.py ncu.csv

Prints launches, time, DRAM bytes read and achieved read bandwidth per kernel name, the
step's total, and the step's kernel time (ncu replays each kernel alone with cold caches, so
the sum is the GPU time without launch gaps).
"""

from __future__ import annotations

import collections
import csv
import sys

TIME_NS = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}
BYTES = {"byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}


def main(path: str) -> None:
    rows = list(csv.reader(open(path)))
    start = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    header, data = rows[start], rows[start + 1 :]
    col = {name: header.index(name) for name in ["ID", "Kernel Name", "Metric Name"]}
    value, unit = header.index("Metric Value"), header.index("Metric Unit")
    metrics: dict[int, dict[str, float]] = collections.defaultdict(dict)
    names: dict[int, str] = {}
    for r in data:
        if len(r) < len(header):
            continue
        kid = int(r[col["ID"]])
        names[kid] = r[col["Kernel Name"]]
        scale = TIME_NS.get(r[unit]) or BYTES.get(r[unit]) or 1.0
        metrics[kid][r[col["Metric Name"]]] = float(r[value].replace(",", "")) * scale
    ids = sorted(names)
    starts = [i for i in ids if names[i].startswith("embedding")]
    first = starts[0] if starts else ids[0]
    last = starts[1] if len(starts) > 1 else ids[-1] + 1
    per: dict[str, list[float]] = collections.OrderedDict()
    for i in ids:
        if first <= i < last:
            a = per.setdefault(names[i][:70], [0, 0.0, 0.0])
            a[0] += 1
            a[1] += metrics[i].get("gpu__time_duration.sum", 0.0)
            a[2] += metrics[i].get("dram__bytes_read.sum", 0.0)
    total_t = sum(a[1] for a in per.values())
    total_b = sum(a[2] for a in per.values())
    print("| kernel | launches | µs | MB read | GB/s |\n| --- | --- | --- | --- | --- |")
    for name, (n, t, b) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name} | {n} | {t / 1e3:.1f} | {b / 1e6:.1f} | {b / t if t else 0:.0f} |")
    launches = sum(a[0] for a in per.values())
    print(f"step: {launches} launches, {total_t / 1e3:.0f} µs, {total_b / 1e9:.2f} GB read")


if __name__ == "__main__":
    main(sys.argv[1])
