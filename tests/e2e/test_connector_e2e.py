"""End-to-end tests of the connector source and sink (``wallaroo.experimental``) with real
processes on 127.0.0.1: ``wallaroo-run``, the ``send_lines`` client and the two-phase-commit
``sink_server``.

The app is tests/apps/wr_connector_app.py: lines ``"KEY SEQ"`` from a connector source ->
key_by(key) -> a state computation that passes each (key, seq) through unchanged (it fixes
nothing) -> a connector sink writing ``"KEY SEQ\\n"``. The input file holds ``k{i % K}
{i // K + 1}``: every key's sequence 1..N, in order.

- ``test_exactly_once_through_kills_of_worker_client_and_sink_server``: with
  ``--run-with-resilience`` (1 worker: a connector stream's position belongs to one worker),
  SIGKILL in turn the worker (the supervisor restarts it), the send_lines client (restarted
  with the same command, it resumes after the last line the worker saw) and the sink server
  (restarted with the same command; the engine rolls back and settles its in-doubt
  transactions), twice over. After a clean stop (SIGTERM, exit 0), the sink server's committed
  file holds every key's 1..N in order, with no gap, repeat or stray line, and (lines sorted)
  the same as a crash-free run of the same setup.
- ``test_without_resilience_every_line_is_delivered``: no resilience, no kill: the sink commits
  every second by itself, so every line reaches the committed file before the run is stopped.

Random choices print their seed (``-s`` shows it; a failure's message repeats it).
"""
from __future__ import annotations

import os
import random
import re
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from support.net import HOST, free_port
from support.processes import STARTUP_RE, WALLAROO_RUN, Proc, app_env
from test_resilience_e2e import diff_summary

APP = "wr_connector_app"
COOKIE = "e2e-cookie"
INTERVAL_NS = 150_000_000          # --time-between-checkpoints: 150 ms
KEYS, PER_KEY = 100, 400           # 40,000 input lines
SLOW = "4"                         # the app sleeps 1 ms every 4 lines: ~10 s of input

WORKERS_RE = re.compile(r"\| (?P<count>\d+) workers \(pids (?P<pids>\d+(?:, \d+)*)\)$")
RECOVERED_RE = re.compile(r"wallaroo: recovered: (?P<count>\d+) workers running again "
                          r"\(pids (?P<pids>\d+(?:, \d+)*)\)")
WENT_AWAY_RE = (r"wallaroo: worker worker-0 went away \(pid {pid} was killed by SIGKILL\); "
                r"every worker goes back to checkpoint (?P<ckpt>\d+|none)")
SINK_ROLLBACK_RE = re.compile(r"checkpoint \d+ failed on worker worker-0: .*; every worker goes "
                              r"back to checkpoint (?P<ckpt>\d+|none)")
LISTENING_RE = re.compile(rb"listening on 127\.0\.0\.1:(?P<port>\d+)")
RESUMED_RE = re.compile(r"send_lines: stream '[^']*' \(id \d+\): the worker has seen "
                        r"(?P<seen>nothing|up to line (?P<line>\d+)); sending from line \d+")


# ---------------------------------------------------------------------------------------------
# helpers

def make_input(path: Path, keys: int = KEYS, per_key: int = PER_KEY) -> Path:
    with open(path, "w", encoding="ascii") as out:
        out.writelines(f"k{i % keys} {i // keys + 1}\n" for i in range(keys * per_key))
    return path


def expected_lines(keys: int = KEYS, per_key: int = PER_KEY) -> list[bytes]:
    return sorted(f"k{k} {n}".encode() for k in range(keys) for n in range(1, per_key + 1))


def committed(out: Path) -> list[bytes]:
    """The committed file's lines, in file order; it must end on a whole line."""
    data = out.read_bytes() if out.exists() else b""
    assert data == b"" or data.endswith(b"\n"), f"{out} ends inside a line: {data[-100:]!r}"
    return data.split(b"\n")[:-1]


def check_sequences(lines: list[bytes], keys: int = KEYS, per_key: int = PER_KEY) -> None:
    """Every line is ``k<j> <n>`` with j < keys, and each key's values in file order are
    exactly 1..per_key (no gap, no repeat, no reordering)."""
    seqs: dict[str, list[int]] = defaultdict(list)
    stray = []
    for line in lines:
        m = re.fullmatch(rb"(k\d+) (\d+)", line)
        if m is None or int(m[1][1:]) >= keys:
            stray.append(line)
            continue
        seqs[m[1].decode()].append(int(m[2]))
    assert not stray, f"{len(stray)} lines that are no KEY SEQ of the input, e.g. {stray[:8]}"
    missing_keys = sorted(set(f"k{j}" for j in range(keys)) - set(seqs))
    assert not missing_keys, f"keys missing from the output: {missing_keys[:10]}"
    want = list(range(1, per_key + 1))
    bad = {}
    for key, values in seqs.items():
        if values != want:
            first = next((i for i, (a, b) in enumerate(zip(values, want)) if a != b),
                         min(len(values), per_key))
            bad[key] = (f"{len(values)} values, want 1..{per_key}; from position {first}: "
                        f"{values[max(0, first - 2):first + 5]}")
    assert not bad, (f"{len(bad)} keys are not exactly 1..{per_key} in order: "
                     f"{dict(sorted(bad.items())[:6])}")


def count_lines(proc: Proc, regex: re.Pattern) -> list[re.Match]:
    return [m for line in proc.stderr_lines if (m := regex.search(line))]


def wait_count(proc: Proc, regex: re.Pattern, count: int, timeout: float, why: str) -> list[re.Match]:
    """The matches once ``count`` stderr lines of ``proc`` match ``regex``; fails if it ends
    first or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = count_lines(proc, regex)
        if len(found) >= count:
            return found
        assert proc.poll() is None, f"{why}: the process ended first\n{proc.describe()}"
        assert time.monotonic() < deadline, (
            f"{why}: fewer than {count} lines matching {regex.pattern!r} within {timeout:g} s\n"
            f"{proc.describe()}")
        time.sleep(0.02)


def kill9(proc: Proc) -> None:
    """SIGKILL ``proc`` (itself) and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL, proc.describe()


class Setup:
    """One run's processes and files: a sink server, wallaroo-run, send_lines, each started
    with a fixed command line so that it can be started again the same way."""

    def __init__(self, processes, folder: Path, source: Path, resilient: bool, slow: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.processes = processes
        self.folder = folder
        self.out = folder / "committed.txt"
        self.sink_port, self.source_port = free_port(), free_port()
        while self.source_port == self.sink_port:
            self.source_port = free_port()
        self.sink_argv = [sys.executable, "-m", "wallaroo.experimental.sink_server",
                          "--host", HOST, "--port", str(self.sink_port), "--cookie", COOKIE,
                          "--out", str(self.out), "--log-dir", str(folder / "sink-logs")]
        self.client_argv = [sys.executable, "-m", "wallaroo.experimental.send_lines",
                            "--host", HOST, "--port", str(self.source_port), "--cookie", COOKIE,
                            "--file", str(source), "--stream-name", "lines"]
        self.run_argv = [WALLAROO_RUN, "--app", APP, "--workers", "1"]
        if resilient:
            rdir = folder / "resilience"
            rdir.mkdir(exist_ok=True)
            self.run_argv += ["--run-with-resilience", "--resilience-dir", str(rdir),
                              "--time-between-checkpoints", str(INTERVAL_NS)]
        self.run_argv += ["--source-port", str(self.source_port), "--sink-port",
                          str(self.sink_port), "--cookie", COOKIE, "--slow", slow]
        self.sinks: list[Proc] = []
        self.clients: list[Proc] = []
        self.run: Proc | None = None

    def _start(self, argv, name) -> Proc:
        return self.processes(argv, name=name, cwd=self.folder, env=app_env(), timeout=20.0)

    def start_sink(self) -> Proc:
        proc = self._start(self.sink_argv, f"sink_server #{len(self.sinks) + 1}")
        deadline = time.monotonic() + 15
        while not LISTENING_RE.search(proc.stdout):
            assert proc.poll() is None, f"the sink server ended\n{proc.describe()}"
            assert time.monotonic() < deadline, f"the sink server is not listening\n{proc.describe()}"
            time.sleep(0.01)
        self.sinks.append(proc)
        return proc

    def start_engine(self) -> Proc:
        self.run = self._start(self.run_argv, "wallaroo-run")
        self.run.wait_stderr(STARTUP_RE, 30)
        return self.run

    def start_client(self) -> Proc:
        proc = self._start(self.client_argv, f"send_lines #{len(self.clients) + 1}")
        self.clients.append(proc)
        return proc

    def describe(self) -> str:
        procs = [p for p in (self.run, *self.sinks, *self.clients) if p is not None]
        return "\n".join(p.describe() for p in procs)


def run_crash_free(processes, folder: Path, source: Path) -> list[bytes]:
    """The committed lines (file order) of the same setup with resilience and no kill."""
    setup = Setup(processes, folder, source, resilient=True, slow="0")
    setup.start_sink()
    run = setup.start_engine()
    client = setup.start_client()
    assert client.wait(40) == 0, setup.describe()
    run.signal(signal.SIGTERM)
    assert run.wait(30) == 0, setup.describe()
    sink = setup.sinks[-1]
    sink.signal(signal.SIGTERM)
    assert sink.wait(10) == 0, sink.describe()
    return committed(setup.out)


# ---------------------------------------------------------------------------------------------
# 1. exactly-once through kills of the worker, the client and the sink server

@pytest.mark.timeout(150)
def test_exactly_once_through_kills_of_worker_client_and_sink_server(processes, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    source = make_input(tmp_path / "in.txt")
    want = expected_lines()
    started = time.monotonic()

    crash_free = run_crash_free(processes, tmp_path / "crash-free", source)
    check_sequences(crash_free)
    assert sorted(crash_free) == want, diff_summary(sorted(crash_free), want)
    print(f"crash-free run: {time.monotonic() - started:.1f} s")

    setup = Setup(processes, tmp_path / "killed", source, resilient=True, slow=SLOW)
    setup.start_sink()
    run = setup.start_engine()
    match = WORKERS_RE.search(run.wait_stderr(STARTUP_RE).group(0))
    assert match and match["count"] == "1", run.describe()
    worker = int(match["pids"])
    setup.start_client()
    restarts = 0          # "recovered" lines expected so far
    kills = []

    def gap():
        time.sleep(rng.uniform(0.4, 1.2))
        assert run.poll() is None, f"seed {seed}: the run ended\n{setup.describe()}"
        assert setup.clients[-1].poll() is None, (
            f"seed {seed}, kills {kills}: send_lines ended before the next kill (the input "
            f"should last longer)\n{setup.describe()}")

    def recovered(why: str) -> int:
        """Wait for the next "recovered" line; the new worker pid (a child of the supervisor)."""
        nonlocal restarts
        restarts += 1
        found = wait_count(run, RECOVERED_RE, restarts, 30, f"seed {seed}: after {why}")
        assert found[-1]["count"] == "1", found[-1].group(0)
        pid = int(found[-1]["pids"])
        children = {c.pid for c in psutil.Process(run.pid).children()}
        assert pid in children, f"worker {pid} is not a child of {run.pid}: {children}"
        return pid

    for cycle in (1, 2):
        # the worker: the supervisor restarts it, and it restores the last checkpoint
        gap()
        os.kill(worker, signal.SIGKILL)
        kills.append(f"worker {worker}")
        wait_count(run, re.compile(WENT_AWAY_RE.format(pid=worker)), 1, 15,
                   f"seed {seed}: kill of worker {worker}")
        worker = recovered(f"kill of worker {worker}")

        # the client: the same command resumes after the last line the worker saw
        gap()
        kill9(setup.clients[-1])
        kills.append("send_lines")
        client = setup.start_client()
        resumed = client.wait_stderr(RESUMED_RE, 20)
        assert resumed["line"] is not None and int(resumed["line"]) > 0, (
            f"seed {seed}: the restarted send_lines did not resume: {resumed.group(0)}")
        print(f"cycle {cycle}: {resumed.group(0)}")

        # the sink server: the same command (same --out and --log-dir) at once; the engine's
        # next checkpoint fails, it rolls back and settles the in-doubt transactions
        gap()
        kill9(setup.sinks[-1])
        kills.append("sink_server")
        sink = setup.start_sink()
        worker = recovered(f"kill of sink server #{len(setup.sinks) - 1}")
        sink.wait_stderr(r"sink_server: .*/worker-0 connected", 20)
        print(f"cycle {cycle} done at {time.monotonic() - started:.1f} s")

    assert len(kills) == 6, kills
    rollbacks = count_lines(run, SINK_ROLLBACK_RE)
    assert len(rollbacks) == 2, (f"seed {seed}: want one rollback per sink server kill, found "
                                 f"{[m.group(0) for m in rollbacks]}\n{run.describe()}")

    client = setup.clients[-1]
    code = client.wait(60)
    assert code == 0, f"seed {seed}: send_lines exited with {code}\n{setup.describe()}"
    assert "the worker acknowledged every line" in client.stderr, client.describe()
    run.signal(signal.SIGTERM)
    code = run.wait(30)
    assert code == 0, f"seed {seed}: wallaroo-run exited with {code}\n{setup.describe()}"
    assert len(count_lines(run, RECOVERED_RE)) == 4, (
        f"seed {seed}: want 4 restarts (2 worker kills, 2 sink server kills)\n{run.describe()}")
    sink = setup.sinks[-1]
    sink.signal(signal.SIGTERM)
    assert sink.wait(10) == 0, sink.describe()

    got = committed(setup.out)
    try:
        check_sequences(got)
        assert sorted(got) == want, diff_summary(sorted(got), want)
        assert sorted(got) == sorted(crash_free), diff_summary(sorted(got), sorted(crash_free))
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}, kills {kills}: {exc}\n{setup.describe()}") from None
    print(f"total {time.monotonic() - started:.1f} s")


# ---------------------------------------------------------------------------------------------
# 2. without resilience: the sink commits every second by itself

@pytest.mark.timeout(60)
def test_without_resilience_every_line_is_delivered(processes, tmp_path):
    keys, per_key = 20, 250
    source = make_input(tmp_path / "in.txt", keys, per_key)
    want = expected_lines(keys, per_key)
    setup = Setup(processes, tmp_path / "run", source, resilient=False, slow="0")
    setup.start_sink()
    run = setup.start_engine()
    assert "at-least-once" not in run.stderr and "cannot replay" not in run.stderr, run.describe()
    client = setup.start_client()
    assert client.wait(30) == 0, setup.describe()
    assert "the worker acknowledged every line" in client.stderr, client.describe()
    # the sink's own commits (every second) bring every line to the file while the run goes on
    deadline = time.monotonic() + 10
    while len(committed(setup.out)) < len(want):
        assert run.poll() is None, setup.describe()
        assert time.monotonic() < deadline, (
            f"not every line committed while running: "
            f"{diff_summary(sorted(committed(setup.out)), want)}\n{setup.describe()}")
        time.sleep(0.05)
    run.signal(signal.SIGTERM)
    assert run.wait(30) == 0, setup.describe()
    assert "not fully delivered" not in run.stderr, run.describe()
    sink = setup.sinks[-1]
    sink.signal(signal.SIGTERM)
    assert sink.wait(10) == 0, sink.describe()
    got = committed(setup.out)
    check_sequences(got, keys, per_key)
    assert sorted(got) == want, diff_summary(sorted(got), want)
