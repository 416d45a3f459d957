"""asv benchmarks: each workload through the engine and as a plain loop, and their ratio.

Run with ``asv run`` (or ``asv run --python=same --quick`` against the installed package).
Workloads are ``word_count``, ``stateless_chain`` and ``windowed_sum`` (tumbling event-time
windows); a workload the installed engine cannot run yet is skipped, not failed.
"""
from wallaroo.errors import NotSupportedYet

from .workloads import SIZES, WORKLOADS


def _prepare(bench, name):
    bench.work = WORKLOADS[name]
    bench.values = bench.work.make_input(SIZES[name] // 4)
    try:
        bench.work.engine_outputs(bench.values[:100])
    except NotSupportedYet as exc:
        raise NotImplementedError(str(exc)) from exc  # asv: skip this parameter


class Throughput:
    """Seconds to push a workload's input through a worker, against the plain loop."""

    params = sorted(WORKLOADS)
    param_names = ["workload"]
    timeout = 300

    def setup(self, name):
        _prepare(self, name)

    def time_engine(self, name):
        self.work.run_engine(self.values)

    def time_plain_loop(self, name):
        self.work.run_plain(self.values)

    def track_engine_over_plain_speed(self, name):
        """How fast the engine is relative to the plain loop (higher is better; 1.0 = as fast)."""
        engine = min(self.work.run_engine(self.values)[0] for _ in range(3))
        plain = min(self.work.run_plain(self.values) for _ in range(3))
        return plain / engine

    track_engine_over_plain_speed.unit = "ratio"


class Latency:
    """Median and 99th-percentile batch latency (ingest to sink), in microseconds."""

    params = sorted(WORKLOADS)
    param_names = ["workload"]

    def setup(self, name):
        _prepare(self, name)

    def _latencies(self):
        return sorted(self.work.run_engine(self.values)[1])

    def track_p50_us(self, name):
        lat = self._latencies()
        return lat[len(lat) // 2] / 1e3

    def track_p99_us(self, name):
        lat = self._latencies()
        return lat[min(len(lat) - 1, int(0.99 * len(lat)))] / 1e3

    track_p50_us.unit = "us"
    track_p99_us.unit = "us"
