"""End-to-end tests of the metrics, through ``wallaroo-run`` as a user runs it (real processes
and sockets, 127.0.0.1 only).

The app is tests/apps/wr_metrics_app.py: TCP source "words" -> decoder -> "strip" (map) ->
"one each" (flat_map of one item) -> key_by word -> "count" (state) -> encoder -> TCP sink, so
every stage takes each message exactly once. Exactly N messages are sent; once the sink's
pipeline has counted N, every stage's count must be N, in ``/api/metrics`` and in the
Prometheus text of ``/metrics`` (summed over workers).

Also: two local workers (``--workers 2``: counts split after the exchange, the graph's
exchange edge, both workers' CPU and memory), a TCP cluster of two (the workers report to the
initializer, which serves the metrics), restarted workers (resilience) keeping the totals, the
default address, ``--quiet``, ``--no-metrics``, an address already taken (exit 2),
checkpoints with ``--run-with-resilience``, and ``wallaroo top --once`` against a running app
and a closed port.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.net import HOST, frame, free_port, free_ports
from support.processes import WALLAROO, WALLAROO_RUN, Proc, app_env, run_cli
from wallaroo._core.chain import DEFAULT_LATENCY_SAMPLING

pytestmark = pytest.mark.timeout(60)

APP = "wr_metrics_app:metrics_app"
APP_NAME = "Metrics Words"
#: Stage names of the app (graph nodes but the sink), in graph order.
NODE_STAGES = ["words", "strip", "one each", "word", "count"]
#: Every measured stage's kind: the graph's plus the decoder and the encoder sub-stages.
KINDS = ["source", "decoder", "map", "flat_map", "key_by", "state", "encoder"]
N = 5000
WORDS = 97                   # distinct keys: enough to land on both of two workers

START_TIMEOUT = 20.0
COUNT_TIMEOUT = 20.0         # seconds for N messages to be counted at the sink's pipeline
STOP_TIMEOUT = 15.0

DASHBOARD_RE = re.compile(
    r"metrics: dashboard at (?P<url>http://(?P<host>[0-9.]+):(?P<port>\d+)/) "
    r"\(JSON: (?P=url)api/metrics, Prometheus: (?P=url)metrics\)$")
METRICS_LINE_RE = re.compile(
    r"metrics worker=(?P<worker>\S+) in=(?P<in>\d+) out=(?P<out>\d+) "
    r"in_rate=\d+\.\d out_rate=\d+\.\d p99_ms=\d+\.\d{3} cpu=\d+% rss_mb=\d+\.\d$")


# ---------------------------------------------------------------------------------------------
# helpers

class Run:
    """A running ``wallaroo-run`` of the metrics app: its process, source port and (when it
    serves metrics) the base URL it printed."""

    def __init__(self, proc: Proc, source_port: int, url: str | None):
        self.proc = proc
        self.source_port = source_port
        self.url = url

    def get(self, path: str, timeout: float = 3.0) -> bytes:
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=timeout) as response:
            return response.read()

    def json(self, path: str) -> dict:
        return json.loads(self.get(path))

    def prometheus(self) -> dict:
        return {f.name: f for f in text_string_to_metric_families(self.get("metrics").decode())}

    def send(self, count: int, start: int = 0) -> None:
        """``count`` framed words on one connection, closed once sent."""
        payload = b"".join(frame(f"w{i % WORDS}") for i in range(start, start + count))
        with socket.create_connection((HOST, self.source_port), timeout=10) as conn:
            conn.sendall(payload)

    def stop(self) -> int:
        self.proc.signal(signal.SIGTERM)
        return self.proc.wait(STOP_TIMEOUT)


def start(processes, tmp_path, sink, *engine_args: str, dashboard: bool = True) -> Run:
    """``wallaroo-run`` of the metrics app with ``engine_args``; waits for its startup line
    and, with ``dashboard``, for the "metrics: dashboard at" line."""
    proc = processes([WALLAROO_RUN, "--app", APP, "--in", f"words@{HOST}:0",
                      "--out", sink.address, *engine_args],
                     name="wallaroo-run", cwd=tmp_path, env=app_env(), timeout=START_TIMEOUT)
    _, ports = proc.startup()
    assert ports.get("words", 0) > 0, proc.describe()
    url = None
    if dashboard:
        url = proc.wait_stderr(DASHBOARD_RE)["url"]
    return Run(proc, ports["words"], url)


def wait_for(condition, what: str, proc: Proc, timeout: float = COUNT_TIMEOUT):
    """Poll ``condition()`` until it returns a true value (returned); fail after ``timeout``
    seconds or when ``proc`` has ended."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = condition()
        except (OSError, ValueError) as exc:   # not serving yet, or a torn read
            value, last_error = None, exc
        if value:
            return value
        assert proc.poll() is None, f"the run ended while waiting for {what}\n{proc.describe()}"
        assert time.monotonic() < deadline, (f"no {what} within {timeout:g} s (last error: "
                                             f"{last_error})\n{proc.describe()}")
        time.sleep(0.1)


def wait_counted(run: Run, n: int) -> dict:
    """``/api/metrics`` once the sink's pipeline has counted ``n`` messages."""
    def counted():
        metrics = run.json("api/metrics")
        (pipeline,) = metrics["pipelines"]
        assert pipeline["messages"] <= n, f"more messages than sent: {pipeline}"
        return metrics if pipeline["messages"] == n else None

    return wait_for(counted, f"{n} messages at the sink's pipeline", run.proc)


def check_stage_counts(metrics: dict, n: int, workers: list[str]) -> dict[str, dict]:
    """Every stage (and the pipeline) counted ``n`` messages, over ``workers``; the stages by
    name."""
    stages = {s["name"]: s for s in metrics["stages"]}
    kinds = [s["kind"] for s in metrics["stages"]]
    assert sorted(kinds) == sorted(KINDS), kinds
    for name in NODE_STAGES:
        assert name in stages, f"no stage {name!r} in {list(stages)}"
    for s in metrics["stages"]:
        assert s["messages"] == n, f"stage {s['name']!r} ({s['kind']}) counted {s['messages']}"
        assert sum(w["messages"] for w in s["workers"].values()) == n, s
        assert set(s["workers"]) <= set(workers), s["workers"]
        assert s["pipeline"] == "words"
    (pipeline,) = metrics["pipelines"]
    assert pipeline["messages"] == n and pipeline["name"] == "words", pipeline
    assert pipeline["sink"].startswith("sink 0 (tcp://127.0.0.1:"), pipeline
    assert sum(w["messages"] for w in pipeline["workers"].values()) == n
    return stages


def check_prometheus(families: dict, n: int, workers: list[str], stage_ids: set[str]) -> None:
    """``wallaroo_stage_messages_total`` summed over workers is ``n`` for every stage, the
    pipeline's is ``n``, and the latency histograms counted something."""
    per_stage: dict[str, float] = {}
    for sample in families["wallaroo_stage_messages"].samples:
        assert sample.labels["app"] == APP_NAME and sample.labels["worker"] in workers, sample
        per_stage[sample.labels["stage_id"]] = per_stage.get(sample.labels["stage_id"], 0) \
            + sample.value
    assert set(per_stage) == stage_ids
    assert all(total == n for total in per_stage.values()), per_stage
    pipeline = [s.value for s in families["wallaroo_pipeline_messages"].samples]
    assert sum(pipeline) == n, pipeline
    # latency: every timed stage has samples (the source itself runs no user code)
    timed = {}
    for sample in families["wallaroo_stage_latency_seconds"].samples:
        if sample.name.endswith("_count"):
            sid = sample.labels["stage_id"]
            timed[sid] = timed.get(sid, 0) + sample.value
    assert set(timed) == stage_ids - {"n0"}, timed
    assert all(count > 0 for count in timed.values()), timed
    end_to_end = sum(s.value for s in families["wallaroo_pipeline_latency_seconds"].samples
                     if s.name.endswith("_count"))
    assert end_to_end == n, "every message's start-to-end latency is recorded"
    worker_latency = {s.labels["worker"]: s.value
                      for s in families["wallaroo_worker_latency_seconds"].samples
                      if s.name.endswith("_count")}
    assert sorted(worker_latency) == sorted(workers)
    assert sum(worker_latency.values()) >= n


def top_once(address: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = app_env(COLUMNS=str(columns))
    return subprocess.run([WALLAROO, "top", "--metrics", address, "--once"], env=env,
                          capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)


def as_top_shows(name: str, width: int = 48) -> str:
    """A stage name as ``wallaroo top`` shows it in a wide terminal (cut to 48 characters)."""
    return name if len(name) <= width else name[:width - 1] + "…"


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on."""
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN}


def tree_listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` and its descendants (local workers) listen on."""
    ports = listening_ports(pid)
    for child in psutil.Process(pid).children(recursive=True):
        ports |= listening_ports(child.pid)
    return ports


def worker_args(workers: int) -> list[str]:
    return ["--workers", str(workers)] if workers > 1 else []


# ---------------------------------------------------------------------------------------------
# one worker

def test_one_worker_counts_every_stage(processes, listener, tmp_path):
    sink = listener()
    port = free_port()
    run = start(processes, tmp_path, sink, "--metrics", f"{HOST}:{port}")
    assert run.url == f"http://{HOST}:{port}/", run.url

    graph = run.json("api/graph")
    assert graph["app"] == APP_NAME
    assert [n["name"] for n in graph["nodes"] if n["kind"] != "sink"] == NODE_STAGES

    run.send(N)
    metrics = wait_counted(run, N)
    stages = check_stage_counts(metrics, N, ["initializer"])
    assert metrics["app"] == APP_NAME and metrics["workers_expected"] == 1
    assert metrics["checkpoints"] is None
    (worker,) = metrics["workers"]
    assert worker["name"] == "initializer" and worker["pid"] == run.proc.pid
    assert worker["messages_in"] == N and worker["messages_out"] == N
    assert worker["rss_bytes"] > 0 and worker["cpu_percent"] >= 0
    assert stages["words"]["kind"] == "source" and stages["count"]["kind"] == "state"

    families = run.prometheus()
    check_prometheus(families, N, ["initializer"], {s["id"] for s in metrics["stages"]})
    # one worker: each timed stage timed its first message and one in 32 after it
    timed = {s.labels["stage_id"]: s.value
             for s in families["wallaroo_stage_latency_seconds"].samples
             if s.name.endswith("_count")}
    assert set(timed.values()) == {math.ceil(N / DEFAULT_LATENCY_SAMPLING)}, timed

    # every message reached the sink
    sink.wait_for(lambda data: data.count(b"\n") >= N, timeout=10)
    assert sink.data.count(b"\n") == N

    # the per-second log line, with every message in and out, and more than one of them
    run.proc.wait_stderr(rf"metrics worker=initializer in={N} out={N} ", timeout=5)
    lines = [line for line in run.proc.stderr_lines if "metrics worker=" in line]
    assert all(METRICS_LINE_RE.search(line) for line in lines), lines
    wait_for(lambda: sum("metrics worker=" in line for line in run.proc.stderr_lines)
             > len(lines), "another metrics line a second later", run.proc, timeout=5)

    # the history: a point a second, one series per stage, pipeline and worker
    history = wait_for(lambda: (h := run.json("api/history"))["time"] and h,
                       "a point of history", run.proc, timeout=5)
    assert set(history["stages"]) == {s["id"] for s in metrics["stages"]}
    assert set(history["pipelines"]) == {p["id"] for p in metrics["pipelines"]}
    assert set(history["workers"]) == {"initializer"}
    for series in [*history["stages"].values(), *history["pipelines"].values()]:
        assert len(series) == len(history["time"]) and all(rate >= 0 for rate in series)

    assert run.stop() == 0, run.proc.describe()
    assert "Traceback" not in run.proc.stderr, run.proc.describe()
    assert sum(DASHBOARD_RE.search(line) is not None for line in run.proc.stderr_lines) == 1


def test_top_against_a_running_app(processes, listener, tmp_path):
    sink = listener()
    port = free_port()
    run = start(processes, tmp_path, sink, "--metrics", f"{HOST}:{port}")
    run.send(500)
    metrics = wait_counted(run, 500)
    result = top_once(f"{HOST}:{port}")
    assert result.returncode == 0, result
    out = result.stdout
    assert out.splitlines()[0].startswith(f"{APP_NAME} at http://{HOST}:{port}/ | up "), out
    assert "1 of 1 workers reporting | resilience off" in out.splitlines()[0]
    for s in metrics["stages"]:
        assert as_top_shows(s["name"]) in out, f"top does not show stage {s['name']!r}:\n{out}"
    assert "initializer" in out and "words -> sink 0" in out
    assert "500" in out

    # refreshed in place until Ctrl-C, which ends it cleanly
    watching = subprocess.Popen([WALLAROO, "top", "--metrics", f"{HOST}:{port}", "--interval",
                                 "0.2"], env=app_env(COLUMNS="200"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        run.send(100, 500)
        wait_counted(run, 600)
        time.sleep(0.6)
    finally:
        watching.send_signal(signal.SIGINT)
        out, err = watching.communicate(timeout=10)
    assert watching.returncode == 0, err
    # (not on a terminal, click leaves out the escape that clears the screen: one table a turn)
    screens = out.split("(every 0.2 s; Ctrl-C to quit)")[:-1]
    assert len(screens) >= 5, out
    assert "500" in screens[0] and "600" in screens[-1], (screens[0], screens[-1])
    assert "Traceback" not in err, err
    assert run.stop() == 0, run.proc.describe()


def test_top_against_a_closed_port():
    port = free_port()
    result = top_once(f"{HOST}:{port}")
    assert result.returncode == 1, result
    assert "cannot read metrics" in result.stderr and f"{HOST}:{port}" in result.stderr, result
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------------
# two local workers

def test_two_workers_split_the_counts(processes, listener, tmp_path):
    sink = listener()
    port = free_port()
    run = start(processes, tmp_path, sink, "--workers", "2", "--metrics", f"{HOST}:{port}")
    workers = ["worker-0", "worker-1"]

    graph = run.json("api/graph")
    nodes = {n["id"]: n for n in graph["nodes"]}
    exchanges = [(nodes[e["from"]]["name"], nodes[e["to"]]["name"])
                 for e in graph["edges"] if e["exchange"]]
    assert exchanges == [("word", "count")], graph["edges"]

    run.send(N)
    metrics = wait_counted(run, N)
    stages = check_stage_counts(metrics, N, workers)
    assert metrics["workers_expected"] == 2
    # after key_by the messages are split over both workers, by key
    for name in ("count", [s["name"] for s in metrics["stages"] if s["kind"] == "encoder"][0]):
        split = {w: f["messages"] for w, f in stages[name]["workers"].items()}
        assert sorted(split) == workers and all(split.values()), (name, split)
        assert sum(split.values()) == N
    (pipeline,) = metrics["pipelines"]
    assert all(w["messages"] > 0 for w in pipeline["workers"].values()), pipeline
    assert sorted(pipeline["workers"]) == workers

    families = run.prometheus()
    check_prometheus(families, N, workers, {s["id"] for s in metrics["stages"]})
    assert sorted(run.json("api/graph")["workers"]) == workers
    sink.wait_for(lambda data: data.count(b"\n") >= N, timeout=10)

    # both workers report CPU and memory while they work: keep them busy until they show
    stop = threading.Event()

    def feed():
        sent = N
        while not stop.is_set():
            run.send(2000, sent)
            sent += 2000
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        def both_busy():
            listed = run.json("api/metrics")["workers"]
            assert sorted(w["name"] for w in listed) == workers, listed
            return listed if all(w["cpu_percent"] > 0 and w["rss_bytes"] > 0
                                 for w in listed) else None
        listed = wait_for(both_busy, "CPU and memory of both workers", run.proc, timeout=15)
    finally:
        stop.set()
        feeder.join(10)
    pids = {w["name"]: w["pid"] for w in listed}
    assert len(set(pids.values())) == 2 and run.proc.pid not in pids.values(), pids
    for w in listed:
        assert w["rss_bytes"] > 10 * 2**20, w    # a Python process holds more than 10 MiB
        assert w["report_age_s"] < 5, w

    result = top_once(f"{HOST}:{port}")
    assert result.returncode == 0, result
    assert "worker-0" in result.stdout and "worker-1" in result.stdout, result.stdout
    assert "2 of 2 workers reporting" in result.stdout
    for s in metrics["stages"]:
        assert as_top_shows(s["name"]) in result.stdout, s["name"]

    assert run.stop() == 0, run.proc.describe()
    assert "Traceback" not in run.proc.stderr, run.proc.describe()


# ---------------------------------------------------------------------------------------------
# a TCP cluster: the workers report to the initializer, which serves the metrics

def start_tcp_cluster(processes, sink, tmp_path, *extra: str, source_port: int = 0):
    """A TCP cluster of the initializer (serving the metrics on a free port) and w1, with
    ``extra`` flags on both; (the run at the initializer, w1, the command line of a worker,
    the run folder)."""
    control, data, port = free_ports(3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    common = [WALLAROO_RUN, "--app", APP, "--in", f"words@{HOST}:{source_port}",
              "--out", sink.address, "--control", f"{HOST}:{control}",
              "--resilience-dir", str(run_dir), *extra]
    init = processes([*common, "--cluster-initializer", "--worker-count", "2",
                      "--data", f"{HOST}:{data}", "--metrics", f"{HOST}:{port}"],
                     name="wallaroo-run initializer", cwd=tmp_path, env=app_env(),
                     timeout=START_TIMEOUT)
    init.wait_stderr(r"^wallaroo: initializer: waiting for ")
    w1 = processes([*common, "--name", "w1"], name="wallaroo-run w1", cwd=tmp_path,
                   env=app_env(), timeout=START_TIMEOUT)
    _, ports = init.startup()
    w1.startup()
    url = init.wait_stderr(DASHBOARD_RE)["url"]
    assert url == f"http://{HOST}:{port}/"
    return Run(init, ports["words"], url), w1, [*common, "--name", "w1"], run_dir


def test_tcp_cluster_serves_metrics_at_the_initializer(processes, listener, tmp_path):
    run, w1, _, _ = start_tcp_cluster(processes, listener(), tmp_path)
    init = run.proc
    workers = ["initializer", "w1"]

    run.send(N)
    metrics = wait_counted(run, N)
    stages = check_stage_counts(metrics, N, workers)
    split = {w: f["messages"] for w, f in stages["count"]["workers"].items()}
    assert sorted(split) == workers and all(split.values()), split
    listed = wait_for(lambda: (m := run.json("api/metrics")["workers"]) and len(m) == 2 and m,
                      "reports of both workers", init)
    assert sorted(w["name"] for w in listed) == workers
    assert {w["name"]: w["pid"] for w in listed} == {"initializer": init.pid, "w1": w1.pid}
    check_prometheus(run.prometheus(), N, workers, {s["id"] for s in metrics["stages"]})
    assert not any(DASHBOARD_RE.search(line) for line in w1.stderr_lines), w1.describe()

    init.signal(signal.SIGTERM)
    assert init.wait(STOP_TIMEOUT) == 0, init.describe()
    assert w1.wait(STOP_TIMEOUT) == 0, w1.describe()
    for proc in (init, w1):
        assert "Traceback" not in proc.stderr, proc.describe()


def test_tcp_cluster_initializer_keeps_the_metrics_across_its_restart(processes, listener,
                                                                     tmp_path):
    """With resilience, a TCP cluster recovers by re-executing its workers, the initializer
    (which serves the metrics) included: the totals and the checkpoints go on from where they
    were, at the same address, and the restart is counted."""
    run, w1, w1_command, run_dir = start_tcp_cluster(
        processes, listener(), tmp_path, "--run-with-resilience",
        "--time-between-checkpoints", "200000000",
        source_port=free_port())   # the source keeps its port across the exec
    init = run.proc
    workers = ["initializer", "w1"]
    run.send(N)
    wait_counted(run, N)
    done = run.json("api/metrics")["checkpoints"]["completed"]
    wait_for(lambda: run.json("api/metrics")["checkpoints"]["completed"] >= done + 2,
             "two more checkpoints", init)

    w1.kill()
    init.wait_stderr(r"restarting this worker with the same command line", timeout=20)
    w1 = processes(w1_command, name="wallaroo-run w1 again", cwd=tmp_path, env=app_env(),
                   timeout=START_TIMEOUT)

    def recovered():
        metrics = run.json("api/metrics")
        names = sorted(w["name"] for w in metrics["workers"])
        return metrics if names == workers and metrics["checkpoints"]["restarts"] == 1 else None

    metrics = wait_for(recovered, "the cluster's metrics after its restart", init, timeout=30)
    assert metrics["checkpoints"]["completed"] >= done + 2, metrics["checkpoints"]
    check_stage_counts(metrics, N, workers)   # the totals from before the restart are kept
    assert not list(run_dir.glob("*.metrics.json")), "the carried metrics were left behind"

    run.send(1000, N)
    metrics = wait_counted(run, N + 1000)
    check_stage_counts(metrics, N + 1000, workers)
    init.signal(signal.SIGTERM)
    assert init.wait(STOP_TIMEOUT) == 0, init.describe()
    assert w1.wait(STOP_TIMEOUT) == 0, w1.describe()


# ---------------------------------------------------------------------------------------------
# addresses and flags

def test_default_address(processes, listener, tmp_path):
    sink = listener()
    run = start(processes, tmp_path, sink)
    assert run.url.startswith(f"http://{HOST}:"), run.url
    port = int(run.url.rsplit(":", 1)[1].rstrip("/"))
    assert port > 0 and port != run.source_port, run.url
    metrics = run.json("api/metrics")
    assert metrics["app"] == APP_NAME
    run.send(100)
    wait_counted(run, 100)
    assert port in listening_ports(run.proc.pid)
    assert run.stop() == 0, run.proc.describe()


@pytest.mark.parametrize("workers", [1, 2])
def test_quiet(processes, listener, tmp_path, workers):
    sink = listener()
    run = start(processes, tmp_path, sink, "--quiet", *worker_args(workers))
    run.send(300)
    wait_counted(run, 300)     # reports are still sent: the dashboard counts
    assert len(run.json("api/metrics")["workers"]) == workers
    time.sleep(3.0)
    assert run.stop() == 0, run.proc.describe()
    lines = [line for line in run.proc.stderr_lines if "metrics worker=" in line]
    assert lines == [], f"--quiet printed metrics lines:\n{run.proc.describe()}"
    assert sum(DASHBOARD_RE.search(line) is not None for line in run.proc.stderr_lines) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_no_metrics(processes, listener, tmp_path, workers):
    sink = listener()
    run = start(processes, tmp_path, sink, "--no-metrics", *worker_args(workers),
                dashboard=False)
    assert tree_listening_ports(run.proc.pid) == {run.source_port}, "only the source listens"
    run.send(N)
    sink.wait_for(lambda data: data.count(b"\n") >= N, timeout=COUNT_TIMEOUT)
    lines = sink.data.decode().splitlines()
    assert len(lines) == N
    last = {}
    for line in lines:
        word, count = line.split()
        last[word] = int(count)
    assert sum(last.values()) == N and len(last) == WORDS
    time.sleep(1.5)   # a reporter would have logged by now
    assert tree_listening_ports(run.proc.pid) == {run.source_port}
    assert run.stop() == 0, run.proc.describe()
    assert not any("metrics" in line for line in run.proc.stderr_lines), run.proc.describe()


def test_metrics_and_no_metrics_contradict(tmp_path, listener):
    result = run_cli("--app", APP, "--in", f"words@{HOST}:0", "--out", listener().address,
                     "--metrics", f"{HOST}:0", "--no-metrics", cwd=tmp_path, timeout=20)
    assert result.returncode == 2, result
    assert b"--no-metrics" in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_address_taken(tmp_path, listener, workers):
    taken = socket.socket()
    try:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        extra = ["--workers", "2"] if workers > 1 else []
        result = run_cli("--app", APP, "--in", f"words@{HOST}:0", "--out", listener().address,
                         "--metrics", f"{HOST}:{port}", *extra, cwd=tmp_path, timeout=30)
    finally:
        taken.close()
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    said = [line for line in stderr.splitlines() if f"{HOST}:{port}" in line]
    assert len(said) == 1 and stderr.strip().splitlines() == said, stderr
    assert "--metrics" in said[0] and "--no-metrics" in said[0], said
    assert "Traceback" not in stderr, stderr
    assert "wallaroo: running" not in stderr, "the run must not start"


# ---------------------------------------------------------------------------------------------
# resilience

def test_checkpoints_are_shown(processes, listener, tmp_path):
    sink = listener()
    resilience = tmp_path / "resilience"
    resilience.mkdir()
    port = free_port()
    run = start(processes, tmp_path, sink, "--metrics", f"{HOST}:{port}",
                "--run-with-resilience", "--resilience-dir", str(resilience),
                "--time-between-checkpoints", "300000000")
    run.send(1000)

    def checkpointed():
        checkpoints = run.json("api/metrics")["checkpoints"]
        assert checkpoints is not None, "resilience is on: checkpoints must not be null"
        if checkpoints["last_id"] is not None and checkpoints["last_id"] >= 1:
            return checkpoints
        return None

    checkpoints = wait_for(checkpointed, "a completed checkpoint", run.proc)
    assert checkpoints["last_duration_s"] > 0, checkpoints
    assert checkpoints["completed"] >= 1 and checkpoints["restarts"] == 0, checkpoints
    assert checkpoints["last_bytes"] is not None and checkpoints["last_bytes"] >= 0
    wait_counted(run, 1000)

    families = run.prometheus()
    (last_id,) = families["wallaroo_checkpoint_last_id"].samples
    assert last_id.value >= 1 and last_id.labels == {"app": APP_NAME}
    (duration,) = families["wallaroo_checkpoint_last_duration_seconds"].samples
    assert duration.value > 0

    result = top_once(f"{HOST}:{port}")
    assert result.returncode == 0 and "| checkpoint " in result.stdout.splitlines()[0], result
    assert run.stop() == 0, run.proc.describe()


def test_restarted_workers_keep_the_totals(processes, listener, tmp_path):
    """Two local workers with resilience; one is killed, both are started again (new pids,
    counting from zero): the totals go on from where they were and the restart is counted."""
    sink = listener()
    resilience = tmp_path / "resilience"
    resilience.mkdir()
    run = start(processes, tmp_path, sink, "--workers", "2", "--run-with-resilience",
                "--resilience-dir", str(resilience), "--time-between-checkpoints", "200000000")
    workers = ["worker-0", "worker-1"]
    run.send(N)
    wait_counted(run, N)
    # a checkpoint after every message went through: nothing is taken back at the restart
    done = run.json("api/metrics")["checkpoints"]["completed"]
    wait_for(lambda: run.json("api/metrics")["checkpoints"]["completed"] >= done + 2,
             "two more checkpoints", run.proc)
    before = {w["name"]: w["pid"] for w in run.json("api/metrics")["workers"]}
    assert sorted(before) == workers

    os.kill(before["worker-1"], signal.SIGKILL)
    run.proc.wait_stderr(r"wallaroo: recovered: 2 workers running again", timeout=20)

    def reported_again():
        metrics = run.json("api/metrics")
        pids = {w["name"]: w["pid"] for w in metrics["workers"]}
        if sorted(pids) == workers and not set(pids.values()) & set(before.values()):
            return metrics
        return None

    metrics = wait_for(reported_again, "reports of the restarted workers", run.proc)
    assert metrics["checkpoints"]["restarts"] == 1, metrics["checkpoints"]
    check_stage_counts(metrics, N, workers)   # nothing lost from the totals, nothing added

    run.send(1000, N)
    metrics = wait_counted(run, N + 1000)
    check_stage_counts(metrics, N + 1000, workers)
    check_prometheus(run.prometheus(), N + 1000, workers, {s["id"] for s in metrics["stages"]})
    assert run.stop() == 0, run.proc.describe()
