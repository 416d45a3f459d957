"""Checkpoints and recovery with a large state: ``python -m benchmarks.recovery``.

Runs an app that keeps one small state object for each of ``--keys`` keys (1,000,000 by
default), takes a checkpoint every second, then kills its worker with SIGKILL and measures:

- a checkpoint's duration (barrier to every acknowledgement) and the worker's stall in it (the
  time its input waits: the barrier's alignment, the sinks' phase 1 and the fork of the
  snapshot writer), and the snapshot's size on disk;
- the time from ``kill -9`` to processing again (the supervisor sees the worker die, starts
  the workers again, they restore the checkpoint and open their sources), and the restore's
  own duration as the worker logs it.

Every figure is the median over ``--rounds`` runs. The app itself (``application_setup``)
counts values per key from an endless generator: key ``i % keys`` for i = 0, 1, 2, ...; it
writes each key once, on its first value, so its committed output holds ``keys`` lines once a
checkpoint with every key has completed.

Example::

    >>> parse_restored("wallaroo [worker-0]: restored checkpoint 4: 1000000 keys, 61 bytes in 812 ms")
    (4, 1000000, 61, 0.812)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import wallaroo

ROOT = Path(__file__).resolve().parents[1]
RESTORED_RE = re.compile(r"restored checkpoint (\d+): (\d+) keys, (\d+) bytes in (\d+) ms")


class Seen:
    """How many values a key has had."""

    __slots__ = ("n",)

    def __init__(self):
        self.n = 0


class Counting:
    """i, i+1, ... for ever (a generator source)."""

    def initial_value(self):
        return 0

    def apply(self, previous):
        return previous + 1


def application_setup(args):
    """The benchmark's app: ``--keys K --output PATH``."""
    keys = int(args[args.index("--keys") + 1])
    output = args[args.index("--output") + 1]

    @wallaroo.computation(name="key")
    def key_of(i):
        return i % keys

    @wallaroo.state_computation(name="seen", state=Seen)
    def seen(key, state):
        state.n += 1
        return key if state.n == 1 else None

    pipeline = (wallaroo.source("numbers", wallaroo.GenSourceConfig("numbers", Counting()))
                .to(key_of).key_by(lambda key: key).to(seen)
                .to_sink(wallaroo.FileSinkConfig(output, wallaroo.encoder(lambda k: f"{k}\n"))))
    return wallaroo.build_application("recovery-bench", pipeline)


def parse_restored(line: str):
    """(checkpoint, keys, bytes, seconds) from a worker's "restored checkpoint" line."""
    m = RESTORED_RE.search(line)
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3]), int(m[4]) / 1000


class Run:
    """One ``wallaroo-run`` of the app with resilience on; stderr lines are collected."""

    def __init__(self, keys: int, folder: Path):
        self.output = folder / "seen.txt"
        self.stats = folder / "stats.json"
        checkpoints = folder / "checkpoints"
        checkpoints.mkdir()
        self.checkpoints = checkpoints
        script = Path(sys.executable).parent / "wallaroo-run"
        command = [str(script), "--app", "benchmarks.recovery", "--keys", str(keys),
                   "--output", str(self.output), "--stats-file", str(self.stats),
                   "--run-with-resilience", "--resilience-dir", str(checkpoints),
                   "--time-between-checkpoints", "1000000000"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))

    def committed_lines(self) -> int:
        try:
            with open(self.output, "rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    def wait_for(self, pattern: str, after: float, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if at >= after and pattern in line:
                    return at, line
            if self.proc.poll() is not None:
                break
            time.sleep(0.005)
        raise RuntimeError(f"no {pattern!r} within {timeout} s; stderr:\n" +
                           "\n".join(line for _, line in self.lines[-20:]))

    def worker_pid(self) -> int:
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        return int(children[0])

    def snapshot_bytes(self) -> int:
        files = sorted(self.checkpoints.rglob("checkpoint-*.ckpt"))
        return files[-1].stat().st_size if files else 0


def one_round(keys: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="wallaroo-recovery-") as folder:
        run = Run(keys, Path(folder))
        try:
            deadline = time.monotonic() + timeout
            while run.committed_lines() < keys:       # a checkpoint holds every key
                if time.monotonic() > deadline or run.proc.poll() is not None:
                    raise RuntimeError("the app did not commit every key in time")
                time.sleep(0.1)
            time.sleep(2.5)                               # two more checkpoints of every key
            size = run.snapshot_bytes()
            killed_at = time.monotonic()
            os.kill(run.worker_pid(), signal.SIGKILL)
            back_at, _ = run.wait_for("recovered:", killed_at, timeout)
            _, line = run.wait_for("restored checkpoint", killed_at, timeout)
            restored = parse_restored(line)
            time.sleep(3.5)                               # checkpoints of the restored state
            run.proc.send_signal(signal.SIGTERM)
            run.proc.wait(timeout=timeout)
            stats = json.loads(run.stats.read_text())
        finally:
            if run.proc.poll() is None:
                run.proc.kill()
        checkpoints = stats.get("checkpoints", {})
        return {"keys": keys, "kill_to_processing_s": back_at - killed_at,
                "restore_s": restored[3], "restored_keys": restored[1],
                "snapshot_bytes": size,
                "checkpoint_s": checkpoints.get("median_seconds"),
                "stall_s": checkpoints.get("median_stall_seconds"),
                "checkpoints": checkpoints.get("completed")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    rounds = [one_round(args.keys, args.timeout) for _ in range(args.rounds)]

    def median(name):
        values = [r[name] for r in rounds if r[name] is not None]
        return statistics.median(values) if values else float("nan")

    print(f"# {args.keys:,} keys of state, checkpoints every 1 s, 1 worker; medians of "
          f"{args.rounds} runs")
    print(f"checkpoint duration      {median('checkpoint_s') * 1000:8.0f} ms (barrier to every "
          f"acknowledgement)")
    print(f"worker stall per ckpt    {median('stall_s') * 1000:8.1f} ms (input held)")
    print(f"snapshot size            {median('snapshot_bytes') / 1e6:8.1f} MB")
    print(f"kill -9 to processing    {median('kill_to_processing_s'):8.2f} s")
    print(f"  of which restore       {median('restore_s'):8.2f} s "
          f"({median('restored_keys'):,.0f} keys)")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
