"""asv benchmarks: each workload through the engine and as a plain loop, and their ratio.

Run with ``asv run --python=same --quick`` (against the installed package; ``make bench`` does)
or ``asv run`` (builds commits of main). Inputs are small (1/20 of the runner's sizes, 1/100
for the end-to-end ones) so the suite takes a few minutes; ``python -m benchmarks.compare`` is
the full runner. Workloads: word_count, keyed_sum, stateless_chain, market_spread,
windowed_sum (see benchmarks/workloads.py). A workload the installed engine cannot run yet is
skipped, not failed.
"""
import tempfile
from pathlib import Path

from wallaroo.errors import NotSupportedYet

from .workloads import WORKLOADS

SMALL = 20
KEYED = sorted(name for name, w in WORKLOADS.items() if w.keyed_inputs is not None)


def _prepare(bench, name, divide=SMALL):
    bench.work = WORKLOADS[name]
    bench.inputs = bench.work.inputs(max(200, bench.work.size // divide))
    part = {k: v[:100] for k, v in bench.inputs.items()}
    try:
        bench.work.check(bench.work.engine_outputs(part), bench.work.plain_outputs(part), part)
    except NotSupportedYet as exc:
        raise NotImplementedError(str(exc)) from exc  # asv: skip this parameter


class Throughput:
    """Seconds to push a workload's input through a worker (in-process), against the plain
    loop over the same values."""

    params = sorted(WORKLOADS)
    param_names = ["workload"]
    timeout = 300

    def setup(self, name):
        _prepare(self, name)

    def time_engine(self, name):
        self.work.run_engine(self.inputs)

    def time_plain_loop(self, name):
        self.work.run_plain(self.inputs)

    def track_engine_over_plain_speed(self, name):
        """How fast the engine is relative to the plain loop (higher is better; 1.0 = as fast)."""
        engine = min(self.work.run_engine(self.inputs)[0] for _ in range(3))
        plain = min(self.work.run_plain(self.inputs)[0] for _ in range(3))
        return plain / engine

    track_engine_over_plain_speed.unit = "ratio"


class Latency:
    """Median and 99th-percentile ingest-to-sink latency (in-process, flat out), from the
    engine's own histogram, in microseconds."""

    params = sorted(WORKLOADS)
    param_names = ["workload"]
    timeout = 300

    def setup(self, name):
        _prepare(self, name)

    def track_p50_us(self, name):
        return self.work.run_engine(self.inputs)[1].percentile(0.5) / 1e3

    def track_p99_us(self, name):
        return self.work.run_engine(self.inputs)[1].percentile(0.99) / 1e3

    track_p50_us.unit = "us"
    track_p99_us.unit = "us"


class EndToEnd:
    """Engine/plain throughput ratio through ``wallaroo-run``: on files, and over TCP on
    127.0.0.1 (median of 3 rounds each; see benchmarks/compare.py)."""

    params = (["word_count", "keyed_sum"], ["files", "tcp"])
    param_names = ["workload", "mode"]
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, name, mode):
        from .compare import Case

        self.tmp = tempfile.TemporaryDirectory(prefix="wallaroo-asv-")
        self.case = Case(WORKLOADS[name], max(1000, WORKLOADS[name].size // 100),
                         Path(self.tmp.name))

    def teardown(self, name, mode):
        self.tmp.cleanup()

    def track_engine_over_plain_speed(self, name, mode):
        from .compare import RUNNERS

        return RUNNERS[mode](self.case, 3).ratio

    track_engine_over_plain_speed.unit = "ratio"


class _OnFiles:
    """What the suites that run ``wallaroo-run`` on files share: the workload's input files,
    ``size_factor`` times the runner's size, in a fresh folder; one sample per run."""

    param_names = ["workload"]
    number = 1
    repeat = 1
    size_factor = 1

    def setup(self, name):
        from .compare import Case

        self.tmp = tempfile.TemporaryDirectory(prefix="wallaroo-asv-")
        self.case = Case(WORKLOADS[name], self.size_factor * WORKLOADS[name].size,
                         Path(self.tmp.name))

    def teardown(self, name):
        self.tmp.cleanup()


class Scaling(_OnFiles):
    """Throughput with 2 local workers over 1 (``wallaroo-run --workers N`` on files, startup
    left out; median of 3 rounds each; see ``run_scaling`` in benchmarks/compare.py). At the
    runner's full size (2 M words): with less, the fixed cost of ending a run (two probe rounds)
    weighs on the short 2-worker runs."""

    params = ["word_count"]
    timeout = 600

    def track_two_workers_over_one(self, name):
        from .compare import run_scaling

        return run_scaling(self.case, [1, 2], 3)[1]["speedup"]

    track_two_workers_over_one.unit = "ratio"


class Resilience(_OnFiles):
    """Throughput with checkpoints every second over none (``wallaroo-run`` on files, one
    worker; median of 3 rounds each; see ``run_resilience`` in benchmarks/compare.py). At three
    times the runner's size: a run spans several checkpoints, and the last one (which commits
    every output before the run ends) weighs less."""

    params = ["word_count", "keyed_sum"]
    timeout = 900
    size_factor = 3

    def track_with_checkpoints_over_without(self, name):
        from .compare import run_resilience

        return run_resilience(self.case, 1.0, 3)["ratio"]

    track_with_checkpoints_over_without.unit = "ratio"


class Metrics(_OnFiles):
    """Throughput with metrics on (the default) over ``--no-metrics`` (``wallaroo-run`` on
    files, one worker; rounds interleaved, median of 3 each; see ``run_metrics_cost`` in
    benchmarks/compare.py)."""

    params = ["word_count", "keyed_sum"]
    timeout = 900

    def track_metrics_on_over_off(self, name):
        from .compare import run_metrics_cost

        return run_metrics_cost(self.case, 3)["ratio"]

    track_metrics_on_over_off.unit = "ratio"


class StateMemory:
    """Bytes of state per key (tracemalloc, runs with 2K and K keys; K = 20,000)."""

    params = (KEYED, ["engine", "plain"])
    param_names = ["workload", "side"]
    timeout = 300

    def track_bytes_per_key(self, name, side):
        from .compare import state_per_key

        return state_per_key(WORKLOADS[name], 20_000)[side]

    track_bytes_per_key.unit = "bytes"
