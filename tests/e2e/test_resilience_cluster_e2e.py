"""A 3-worker TCP cluster with ``--run-with-resilience`` on 127.0.0.1, as an operator runs it:

    wallaroo-run --app wr_resilience_app:word_count --cluster-initializer --worker-count 3 \\
        --control 127.0.0.1:C --data 127.0.0.1:D --run-with-resilience --resilience-dir R ...
    wallaroo-run --app wr_resilience_app:word_count --control 127.0.0.1:C --name w1 ...
    wallaroo-run --app wr_resilience_app:word_count --control 127.0.0.1:C --name w2 ...

The initializer is killed with SIGKILL and started again with the same command line (the
survivors restart themselves and rejoin it); later w2 is killed and started again the same
way. Every process exits 0 and the committed output (the part files' lines, sorted) equals a
crash-free cluster run's, byte for byte. Worker indexes are stable (the initializer 0, the
others by name), so ``out.part-i`` stays with the same worker.
"""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from support.net import HOST, free_ports
from support.processes import WALLAROO_RUN, Proc, app_env
from wallaroo.cluster.auth import SECRET_ENV

from test_resilience_e2e import committed_lines, diff_summary, model_word_count, pending_files, word_input

NAMES = ("initializer", "w1", "w2")
INTERVAL_NS = 150_000_000
TIMEOUT = 45.0


def env() -> dict[str, str]:
    environ = app_env()
    environ.pop(SECRET_ENV, None)
    return environ


class ResilientCluster:
    """Command lines and processes of the cluster (see the module docstring)."""

    def __init__(self, processes, cwd: Path, app_args: list[str]):
        self.processes = processes
        self.cwd = cwd
        self.app_args = app_args
        control, data = free_ports(2)
        self.control = f"{HOST}:{control}"
        self.data = f"{HOST}:{data}"
        self.rdir = cwd / "resilience"
        self.rdir.mkdir(exist_ok=True)
        self.procs: dict[str, Proc] = {}
        self.history: list[Proc] = []   # every process started, killed ones included

    def argv(self, name: str) -> list[str]:
        argv = [WALLAROO_RUN, "--app", "wr_resilience_app:word_count", "--control", self.control]
        if name == "initializer":
            argv += ["--cluster-initializer", "--worker-count", "3", "--data", self.data]
        else:
            argv += ["--name", name]
        return argv + ["--run-with-resilience", "--resilience-dir", str(self.rdir),
                       "--time-between-checkpoints", str(INTERVAL_NS), *self.app_args]

    def start(self, name: str) -> Proc:
        proc = self.processes(self.argv(name), name=f"wallaroo-run {name} #{len(self.history)}",
                              cwd=self.cwd, env=env(), timeout=30.0)
        self.procs[name] = proc
        self.history.append(proc)
        return proc

    def start_all(self) -> None:
        self.start("initializer").wait_stderr(r"^wallaroo: initializer: waiting for ")
        for name in NAMES[1:]:
            self.start(name)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        assert proc.poll() is None, f"{name} already ended\n{self.describe()}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

    def wait_all(self, timeout: float = TIMEOUT) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        return {name: proc.wait(max(0.1, deadline - time.monotonic()))
                for name, proc in self.procs.items()}

    def describe(self) -> str:
        return "\n".join(proc.describe() for proc in self.history)


def ready_count(proc: Proc) -> int:
    return sum("cluster ready: " in line for line in proc.stderr_lines)


RESTARTING = "restarting this worker with the same command line"


def restart_count(proc: Proc) -> int:
    return sum(RESTARTING in line for line in proc.stderr_lines)


def wait_until(predicate, timeout: float, what: str, cluster: ResilientCluster) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s\n{cluster.describe()}"
        time.sleep(0.02)


def crash_free_cluster(processes, tmp_path: Path, source: Path) -> list[bytes]:
    folder = tmp_path / "crash-free"
    folder.mkdir()
    output = folder / "out.txt"
    cluster = ResilientCluster(processes, folder, ["--input", str(source), "--output", str(output)])
    cluster.start_all()
    codes = cluster.wait_all()
    assert codes == {name: 0 for name in NAMES}, cluster.describe()
    return committed_lines(output)


@pytest.mark.timeout(120)
def test_cluster_recovers_from_killed_initializer_and_worker(processes, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    source = word_input(tmp_path / "in.txt", 300_000, seed=seed)
    want = crash_free_cluster(processes, tmp_path, source)
    assert want == model_word_count(source), "the crash-free run is not a word count"

    output = tmp_path / "out.txt"
    cluster = ResilientCluster(processes, tmp_path, ["--input", str(source), "--output", str(output),
                                                     "--slow", "20"])
    cluster.start_all()
    first = cluster.procs["initializer"]
    wait_until(lambda: ready_count(first) >= 1, 30, "cluster ready", cluster)
    survivors = {name: cluster.procs[name] for name in ("w1", "w2")}
    pids = {name: proc.pid for name, proc in survivors.items()}

    # 1. the initializer dies; the others restart themselves (same pid); it is started again
    time.sleep(rng.uniform(0.5, 2.0))
    cluster.kill("initializer")
    for name, proc in survivors.items():
        wait_until(lambda: restart_count(proc) >= 1, 20, f"{name} restarting itself", cluster)
    again = cluster.start("initializer")
    wait_until(lambda: ready_count(again) >= 1, 30, "the cluster formed again", cluster)
    for name, proc in survivors.items():
        assert proc.poll() is None and proc.pid == pids[name], cluster.describe()

    # 2. later, w2 dies and is started again; w1 and the initializer restart themselves
    time.sleep(rng.uniform(0.5, 2.0))
    assert all(p.poll() is None for p in cluster.procs.values()), (
        f"the run ended before the second kill (seed {seed})\n{cluster.describe()}")
    readies = ready_count(again)
    restarts = {name: restart_count(cluster.procs[name]) for name in ("initializer", "w1")}
    cluster.kill("w2")
    for name, before in restarts.items():
        wait_until(lambda: restart_count(cluster.procs[name]) > before, 20,
                   f"{name} restarting itself", cluster)
    cluster.start("w2")
    wait_until(lambda: ready_count(again) > readies, 30, "the cluster formed a third time", cluster)

    codes = cluster.wait_all()
    assert codes == {name: 0 for name in NAMES}, f"seed {seed}\n{cluster.describe()}"
    got = committed_lines(output)
    assert got == want, f"seed {seed}: {diff_summary(got, want)}\n{cluster.describe()}"
    assert not pending_files(output)
    parts = sorted(p.name for p in tmp_path.glob("out.txt.part-*"))
    assert parts == ["out.txt.part-0", "out.txt.part-1", "out.txt.part-2"], parts


@pytest.mark.timeout(90)
def test_a_failing_stage_stops_the_cluster_without_restarts(processes, tmp_path):
    """A user error is not a crash: with resilience on, a stage that raises under
    --on-error fail stops every worker (exit 1); none restarts itself to replay the same
    message into the same error."""
    source = tmp_path / "in.txt"
    lines = ["alpha beta gamma"] * 20_000 + ["boom"] + ["delta epsilon"] * 20_000
    source.write_text("\n".join(lines) + "\n")
    cluster = ResilientCluster(processes, tmp_path, ["--input", str(source), "--output",
                                                     str(tmp_path / "out.txt"),
                                                     "--fail-on", "boom"])
    cluster.start_all()
    codes = cluster.wait_all()
    assert codes == {name: 1 for name in NAMES}, cluster.describe()
    for name, proc in cluster.procs.items():
        assert restart_count(proc) == 0, f"{name} restarted itself\n{cluster.describe()}"
    assert any("'boom' in the input" in line for proc in cluster.procs.values()
               for line in proc.stderr_lines), cluster.describe()
