"""Print each workload's throughput and latency beside a plain Python loop doing the same work.

Machines are shared and noisy: every figure is the median of several rounds, and the ratio
engine/plain is computed from medians of the same run on the same machine.

    python benchmarks/run.py            # all workloads, 5 rounds
    python benchmarks/run.py --rounds 9 word_count windowed_sum

Before timing, each workload's engine outputs are checked against its plain loop's on a slice of
its input (as multisets where the order may differ, e.g. windows firing several keys at once).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.workloads import SIZES, WORKLOADS  # noqa: E402
from wallaroo.errors import NotSupportedYet  # noqa: E402


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply input sizes")
    args = parser.parse_args()
    unknown = [name for name in args.workloads if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; "
                     f"choose from {', '.join(WORKLOADS)}")
    print(f"# medians of {args.rounds} rounds; ratio = engine/plain throughput (1.00 = as fast)")
    print(f"{'workload':<18}{'items':>10}{'engine/s':>14}{'plain/s':>14}{'ratio':>8}"
          f"{'p50 lat':>11}{'p99 lat':>11}")
    for name in args.workloads:
        work = WORKLOADS[name]
        values = work.make_input(int(SIZES[name] * args.scale))
        check = values[:work.check_size]
        try:
            engine_out = work.engine_outputs(check)
        except NotSupportedYet as exc:
            print(f"{name:<18}{len(values):>10,}  skipped: {exc}")
            continue
        if not work.same_outputs(engine_out, work.plain(check)):
            raise AssertionError(f"{name}: on the first {len(check):,} values the engine's outputs "
                                 f"differ from the plain loop's")
        engine, plain, lat = [], [], []
        for _ in range(args.rounds):
            seconds, latencies = work.run_engine(values)
            engine.append(seconds)
            lat.extend(latencies)
            plain.append(work.run_plain(values))
        e, p = statistics.median(engine), statistics.median(plain)
        print(f"{name:<18}{len(values):>10,}{len(values) / e:>14,.0f}{len(values) / p:>14,.0f}"
              f"{p / e:>8.2f}{percentile(lat, 0.5) / 1e3:>9.0f}us{percentile(lat, 0.99) / 1e3:>9.0f}us")


if __name__ == "__main__":
    main()
