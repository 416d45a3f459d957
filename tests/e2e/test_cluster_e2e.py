"""TCP clusters of three ``wallaroo-run`` processes on 127.0.0.1, formed with the original flags.

Every worker runs tests/apps/wr_cluster_app.py (word count: lines -> words -> count per word
-> ``"word => N"`` lines in a file sink, one part file per worker). The cluster is

    wallaroo-run --app wr_cluster_app --cluster-initializer --worker-count 3 \\
        --control 127.0.0.1:C --data 127.0.0.1:D [--external 127.0.0.1:E] ...
    wallaroo-run --app wr_cluster_app --control 127.0.0.1:C --name w1 ...
    wallaroo-run --app wr_cluster_app --control 127.0.0.1:C --name w2 --my-data 127.0.0.1:M ...

and is driven from outside only: the wallaroo tools (``wallaroo cluster ...``), sockets to the
TCP sources, signals, and the files the workers write. The ports are picked here (bound, then
closed) so that every worker can be told the initializer's before it runs.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from random import Random

import pytest

from support.net import HOST, frame, free_ports
from support.processes import STARTUP_RE, WALLAROO, WALLAROO_RUN, Proc, app_env
from wallaroo.cluster.auth import SECRET_ENV

pytestmark = pytest.mark.timeout(90)

APP = "wr_cluster_app"
APP_NAME = "Cluster Word Count"
NAMES = ("initializer", "w1", "w2")
SECRET = "s3cret"

FORM_TIMEOUT = 15.0   # seconds for the cluster to form and every worker to start
RUN_TIMEOUT = 20.0    # seconds for a run (or a shutdown) to end
LINE_RE = re.compile(r"^(?P<word>\S+) => (?P<count>\d+)$")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    """app_env() without a cluster secret from the caller's environment, plus ``extra``."""
    env = app_env()
    env.pop(SECRET_ENV, None)
    env.update(extra)
    return env


def word_lines(seed: int, lines: int, vocabulary: int = 150, per_line: int = 8) -> list[str]:
    rng = Random(seed)
    words = [f"word{i}" for i in range(vocabulary)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, per_line)))
            for _ in range(lines)]


def part_files(output: Path) -> dict[int, Path]:
    """{worker index: part file} of the file sink ``output``."""
    return {int(p.name.rsplit("-", 1)[1]): p for p in output.parent.glob(output.name + ".part-*")}


def output_lines(output: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in part_files(output).values())


def check_counts(output: Path, want: Counter, workers: int = 3) -> dict[int, Counter]:
    """The part files of ``output`` hold, for every word, the lines ``word => 1`` ..
    ``word => N`` in order, all in one part, N being the word's count in ``want`` (and no
    other word). Returns {part index: Counter of the totals in that part}."""
    parts = part_files(output)
    assert sorted(parts) == list(range(workers)), (
        f"expected the parts 0..{workers - 1} of {output}, found {sorted(parts)}")
    seen: dict[str, list[int]] = {}
    owner: dict[str, int] = {}
    per_part: dict[int, Counter] = {}
    for index, path in sorted(parts.items()):
        text = path.read_text(encoding="utf-8")
        assert text == "" or text.endswith("\n"), f"{path} ends inside a line: {text[-200:]!r}"
        per_part[index] = Counter()
        for line in text.splitlines():
            match = LINE_RE.match(line)
            assert match, f"{path}: unexpected line {line!r}"
            word, n = match["word"], int(match["count"])
            assert owner.setdefault(word, index) == index, (
                f"{word!r} is counted in part {owner[word]} and in part {index}")
            seen.setdefault(word, []).append(n)
            per_part[index][word] = n
    got = Counter({word: counts[-1] for word, counts in seen.items()})
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted((w, got[w], want[w]) for w in set(got) & set(want) if got[w] != want[w])
    assert not (missing or extra or wrong), (
        f"final counts differ: missing {missing[:10]}, unexpected {extra[:10]}, "
        f"(word, got, want) {wrong[:10]}")
    bad = {w: c for w, c in seen.items() if c != list(range(1, len(c) + 1))}
    assert not bad, f"counts not 1..N in order (lost or repeated updates): {dict(list(bad.items())[:5])}"
    return per_part


def cluster_cli(command: str, external: str, *args: str, env: dict[str, str] | None = None,
                timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """``wallaroo cluster COMMAND --external EXTERNAL ARGS`` to its end (text output)."""
    return subprocess.run([WALLAROO, "cluster", command, "--external", external, *args],
                          env=env or clean_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def send_lines(port: int, lines: list[str]) -> None:
    """Each line as one u32-length frame to the TCP source on ``port``, then close."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"".join(frame(line) for line in lines))


def wait_until(predicate, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc in procs:
            assert proc.poll() is None, f"{proc.name} ended while waiting for {what}\n{proc.describe()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s\n"
                                 + "\n".join(p.describe() for p in procs))
        time.sleep(0.05)


def process_group_gone(proc: Proc) -> bool:
    """True when nothing is left of ``proc``'s process group (it leads its own session)."""
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return True
    return False


class Cluster:
    """The command lines and processes of a 3-worker cluster on 127.0.0.1.

    ``app_args`` go to every worker; ``secret`` is given with --cluster-secret to each worker
    unless a call says otherwise; ``external``: the initializer serves --external;
    ``run_dir``: --resilience-dir of every worker (default ``cwd/run``: the run files of
    these tests never go to the shared /tmp/wallaroo).
    """

    def __init__(self, processes, cwd: Path, app_args: list[str], *, secret: str | None = None,
                 external: bool = False, run_dir: Path | None = None, count: int = 3):
        self.processes = processes
        self.cwd = cwd
        self.app_args = list(app_args)
        self.secret = secret
        self.count = count
        self.run_dir = run_dir or cwd / "run"
        control, data, ext, my_data = free_ports(4)
        self.control = f"{HOST}:{control}"
        self.data = f"{HOST}:{data}"
        self.my_data = f"{HOST}:{my_data}"   # w2's --my-data (w1 leaves it to the engine)
        self.external = f"{HOST}:{ext}" if external else None
        self.procs: dict[str, Proc] = {}

    def argv(self, name: str, secret: str | None = "default", extra: list[str] = ()) -> list[str]:
        argv = [WALLAROO_RUN, "--app", APP, "--control", self.control]
        if name == "initializer":
            argv += ["--cluster-initializer", "--worker-count", str(self.count), "--data", self.data]
            if self.external:
                argv += ["--external", self.external]
        else:
            argv += ["--name", name]
            if name == "w2":
                argv += ["--my-data", self.my_data]
        secret = self.secret if secret == "default" else secret
        if secret is not None:
            argv += ["--cluster-secret", secret]
        argv += ["--resilience-dir", str(self.run_dir)]
        return argv + list(extra) + self.app_args

    def start(self, name: str, secret: str | None = "default", extra: list[str] = (),
              env: dict[str, str] | None = None, label: str | None = None) -> Proc:
        proc = self.processes(self.argv(name, secret, extra), name=f"wallaroo-run {label or name}",
                              cwd=self.cwd, env=env or clean_env(), timeout=FORM_TIMEOUT)
        if label is None:
            self.procs[name] = proc
        return proc

    def start_all(self) -> None:
        """The initializer, then (once its control port listens: no retry needed) the others."""
        self.start("initializer").wait_stderr(r"^wallaroo: initializer: waiting for ")
        for name in NAMES[1:self.count]:
            self.start(name)

    def wait_started(self) -> dict[str, dict[str, int]]:
        """Wait for "cluster ready" and every worker's startup line; {name: {source: port}}."""
        self.procs["initializer"].wait_stderr(r"cluster ready: ")
        ports = {}
        for name, proc in self.procs.items():
            match, found = proc.startup()
            assert int(match["pid"]) == proc.pid, match.group(0)
            ports[name] = found
        return ports

    def wait_all(self, timeout: float = RUN_TIMEOUT) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        return {name: proc.wait(max(0.1, deadline - time.monotonic()))
                for name, proc in self.procs.items()}

    def describe(self) -> str:
        return "\n".join(proc.describe() for proc in self.procs.values())


# ---------------------------------------------------------------------------------------------
# 1. a bounded run over a file
# ---------------------------------------------------------------------------------------------

def test_three_workers_count_words_of_a_file(tmp_path, processes):
    """Every worker is given the same input file and reads its byte range of it; the union of
    the part files holds the right total for every word; the phases are logged; all exit 0."""
    lines = word_lines(seed=1, lines=4000)
    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    output = tmp_path / "out" / "counts.txt"
    output.parent.mkdir()
    cluster = Cluster(processes, tmp_path, ["--input", str(source), "--output", str(output)],
                      run_dir=tmp_path / "run")
    cluster.start_all()
    codes = cluster.wait_all()
    assert codes == {name: 0 for name in NAMES}, cluster.describe()

    per_part = check_counts(output, Counter(" ".join(lines).split()))
    assert all(per_part[i] for i in range(3)), f"a worker owns no word: {per_part}"

    # the phases, as each worker logs them
    init = cluster.procs["initializer"]
    for n in (1, 2, 3):
        init.wait_stderr(rf"^wallaroo: worker '(initializer|w1|w2)' joined \({n} of 3\)$", 0)
    joined = [m for line in init.stderr_lines
              if (m := re.match(r"^wallaroo: worker '(\S+)' joined", line))]
    assert sorted(m[1] for m in joined) == sorted(NAMES), init.stderr
    # the initializer is 0, the others by name (whatever order they joined in), so that a
    # worker restarted with the same command line gets the same index
    topology = ["initializer"] + sorted(m[1] for m in joined if m[1] != "initializer")
    init.wait_stderr(rf"^wallaroo: cluster ready: 3 workers \({', '.join(topology)}\)$", 0)
    for name, proc in cluster.procs.items():
        index = topology.index(name)
        proc.wait_stderr(rf"^wallaroo: connected to the initializer at {re.escape(cluster.control)}$", 0)
        proc.wait_stderr(rf"^wallaroo: topology received: 3 workers \({', '.join(topology)}\); "
                         rf"this is {name}, worker {index}$", 0)
        proc.wait_stderr(r"^wallaroo: ready: linked to 2 other worker\(s\) over TCP$", 0)
        match = proc.wait_stderr(STARTUP_RE, 0)
        assert match["app"] == APP_NAME
        assert match["rest"].endswith(f"| worker {name} ({index + 1} of 3)"), match.group(0)
        assert f"sink file://{output}.part-{index}" in match["rest"], match.group(0)
        assert "Traceback" not in proc.stderr, proc.describe()
    # a clean end removes every run file
    assert not list((tmp_path / "run").glob("*.worker.json")), list((tmp_path / "run").iterdir())


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("solo word\n", id="one-line"),
    pytest.param("héllo wörld héllo\nx y", id="utf8-no-final-newline"),
    pytest.param("a\n" + "b " * 5000 + "\nc c\n", id="line-over-two-ranges"),
])
def test_file_split_edge_cases(tmp_path, processes, text):
    """Byte ranges of files that do not split evenly: every line is read by exactly one
    worker, whatever the lengths; all exit 0."""
    source = tmp_path / "in.txt"
    source.write_bytes(text.encode("utf-8"))
    output = tmp_path / "counts.txt"
    cluster = Cluster(processes, tmp_path, ["--input", str(source), "--output", str(output)])
    cluster.start_all()
    assert cluster.wait_all() == {name: 0 for name in NAMES}, cluster.describe()
    check_counts(output, Counter(text.split()))


# ---------------------------------------------------------------------------------------------
# 2. an unbounded run: external control port, run files, shutdown
# ---------------------------------------------------------------------------------------------

def test_status_run_files_and_clean_shutdown(tmp_path, processes):
    """An unbounded TCP word count: ``wallaroo cluster status`` lists the three workers,
    processing; the run files exist while it runs; ``wallaroo cluster shutdown`` makes all
    three flush their sinks, remove their run files and exit 0."""
    output = tmp_path / "counts.txt"
    run_dir = tmp_path / "run"
    cluster = Cluster(processes, tmp_path, ["--in", f"lines@{HOST}:0", "--output", str(output)],
                      external=True, run_dir=run_dir)
    cluster.start_all()
    ports = cluster.wait_started()

    status = cluster_cli("status", cluster.external, "--json")
    assert status.returncode == 0, status.stderr
    reply = json.loads(status.stdout)
    assert sorted(reply["worker_names"]) == sorted(NAMES) and reply["worker_names"][0] == "initializer"
    assert reply["worker_count"] == 3 and reply["processing_messages"] is True, reply
    human = cluster_cli("status", cluster.external)
    assert human.returncode == 0 and human.stdout.startswith("3 workers: initializer, "), human

    # every worker keeps a run file while it runs
    for name, proc in cluster.procs.items():
        path = run_dir / f"{APP_NAME.replace(' ', '_')}-{name}.worker.json"
        assert path.exists(), f"no run file {path}: {sorted(os.listdir(run_dir))}"
        info = json.loads(path.read_text())
        assert info["pid"] == proc.pid and info["name"] == name, info
        assert info["control"] == cluster.control, info
        assert info["index"] == reply["worker_names"].index(name), (info, reply)

    # every worker's TCP source takes a share of the input
    lines = word_lines(seed=2, lines=900)
    chunks = [lines[0:300], lines[300:600], lines[600:900]]
    for name, chunk in zip(NAMES, chunks):
        assert list(ports[name]) == ["lines"], ports
        send_lines(ports[name]["lines"], chunk)
    want = Counter(" ".join(lines).split())
    wait_until(lambda: output_lines(output) >= sum(want.values()), RUN_TIMEOUT,
               "every word counted", cluster.procs.values())

    entities = cluster_cli("state-entities", cluster.external, "--json")
    assert entities.returncode == 0, entities.stderr
    count = json.loads(entities.stdout)["count"]
    assert count["total"] == len(want) and sorted(count["workers"]) == sorted(NAMES), count
    partitions = cluster_cli("partitions", cluster.external, "--json")
    assert partitions.returncode == 0, partitions.stderr
    groups = json.loads(partitions.stdout)["workers"]
    assert sorted(groups) == sorted(NAMES) and all(groups.values()), groups

    shutdown = cluster_cli("shutdown", cluster.external)
    assert shutdown.returncode == 0, shutdown.stderr
    assert "shutting down" in shutdown.stdout, shutdown.stdout
    codes = cluster.wait_all()
    assert codes == {name: 0 for name in NAMES}, cluster.describe()
    check_counts(output, want)
    left = sorted(p.name for p in run_dir.iterdir())
    assert left == [], f"run files left after a clean shutdown: {left}"
    for proc in cluster.procs.values():
        assert "not fully delivered" not in proc.stderr and "Traceback" not in proc.stderr, proc.describe()


@pytest.mark.parametrize("how", ["wallaroo cluster shutdown", "SIGTERM to w1"])
def test_stop_while_input_streams_in_loses_nothing_taken_in(tmp_path, processes, how):
    """A stop while one connection streams lines into the initializer's source: the source
    took in some prefix of the lines, and the part files must count exactly the words of that
    prefix (every record in flight between workers at the stop is counted, none twice); all
    three exit 0."""
    output = tmp_path / "counts.txt"
    cluster = Cluster(processes, tmp_path, ["--in", f"lines@{HOST}:0", "--output", str(output)],
                      external=True)
    cluster.start_all()
    ports = cluster.wait_started()
    sent: list[str] = []
    stop = threading.Event()

    def feed() -> None:
        rng = Random(7)
        words = [f"word{i}" for i in range(300)]
        try:
            with socket.create_connection((HOST, ports["initializer"]["lines"]), timeout=5) as sock:
                while not stop.is_set():
                    batch = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
                             for _ in range(200)]
                    sent.extend(batch)
                    sock.sendall(b"".join(frame(line) for line in batch))
        except OSError:
            pass   # the source closed the connection at the stop

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        wait_until(lambda: output_lines(output) > 20000, RUN_TIMEOUT, "output flowing",
                   cluster.procs.values())
        if how == "SIGTERM to w1":
            cluster.procs["w1"].signal(signal.SIGTERM)
        else:
            result = cluster_cli("shutdown", cluster.external)
            assert result.returncode == 0, result.stderr
        codes = cluster.wait_all()
    finally:
        stop.set()
        feeder.join(5)
    assert codes == {name: 0 for name in NAMES}, cluster.describe()
    total = output_lines(output)
    taken, words = [], 0
    for line in sent:
        if words >= total:
            break
        taken.append(line)
        words += len(line.split())
    assert words == total, (f"{total} counts written: not the words of any prefix of the "
                            f"{len(sent)} lines sent (the nearest prefix has {words} words)")
    check_counts(output, Counter(" ".join(taken).split()))
    cluster.procs["initializer"].wait_stderr(r"stopping: every worker stops its input", 0)


# ---------------------------------------------------------------------------------------------
# 3. the cluster secret
# ---------------------------------------------------------------------------------------------

REFUSED_CONTROL_RE = r"refused a control connection from 127\.0\.0\.1:\d+: {}"


def test_cluster_secret_keeps_out_workers_and_clients(tmp_path, processes):
    """With --cluster-secret: joiners with a wrong or no secret are refused (exit 1, the
    initializer logs it) and take no place in the cluster, before or after it formed; control
    clients with a wrong or no secret are refused (exit 1) and their shutdown stops nothing;
    the right secret, by flag or by environment, works; the run completes correctly."""
    output = tmp_path / "counts.txt"
    cluster = Cluster(processes, tmp_path, ["--in", f"lines@{HOST}:0", "--output", str(output)],
                      secret=SECRET, external=True)
    init = cluster.start("initializer")
    init.wait_stderr(r"worker 'initializer' joined \(1 of 3\)")
    cluster.start("w1")
    init.wait_stderr(r"worker 'w1' joined \(2 of 3\)")

    # while it forms: an intruder named like the missing worker, with the wrong secret
    intruder = cluster.start("w2", secret="wrong", extra=["--join-timeout", "5"], label="intruder w2")
    assert intruder.wait(10) == 1, intruder.describe()
    assert re.search(r"^wallaroo-run: the initializer at 127\.0\.0\.1:\d+ refused this worker: .*"
                     r"wrong cluster secret", intruder.stderr, re.M), intruder.describe()
    init.wait_stderr(REFUSED_CONTROL_RE.format("wrong cluster secret"), 5)
    assert "topology received" not in intruder.stderr
    forming = cluster_cli("status", cluster.external, "--json", "--secret", SECRET)
    assert forming.returncode == 0, forming.stderr
    assert json.loads(forming.stdout) == {"worker_names": ["initializer", "w1"], "worker_count": 2,
                                          "processing_messages": False}

    # the real w2 has the secret in its environment only
    cluster.start("w2", secret=None, env=clean_env(**{SECRET_ENV: SECRET}))
    ports = cluster.wait_started()
    init.wait_stderr(r"^wallaroo: cluster ready: 3 workers \(initializer, w1, w2\)$", 0)

    # after it formed: a wrong secret and no secret
    for label, secret, told, logged in (
            ("intruder w3", "wrong", "wrong cluster secret", "wrong cluster secret"),
            ("anonymous w4", None, "this cluster requires a cluster secret", "no cluster secret")):
        name = label.split()[1]
        intruder = cluster.start(name, secret=secret, extra=["--join-timeout", "5"], label=label)
        assert intruder.wait(10) == 1, intruder.describe()
        assert "refused this worker" in intruder.stderr and told in intruder.stderr, intruder.describe()
        init.wait_stderr(REFUSED_CONTROL_RE.format(logged), 5)

    # control clients: wrong secret, no secret
    for args, hint in ((["--secret", "wrong"], "wrong cluster secret"),
                       ([], "this client has no secret")):
        for command in ("status", "partitions", "state-entities", "shutdown"):
            refused = cluster_cli(command, cluster.external, *args)
            assert refused.returncode == 1, (command, args, refused)
            assert "refused this client" in refused.stderr and hint in refused.stderr, refused.stderr
            assert refused.stdout == "", refused.stdout
    init.wait_stderr(r"external control port: refused 127\.0\.0\.1:\d+: wrong cluster secret", 5)
    time.sleep(0.5)   # a shutdown that got through would be under way by now
    for proc in cluster.procs.values():
        assert proc.poll() is None, f"a refused shutdown stopped the cluster\n{proc.describe()}"
    assert "stopping" not in init.stderr, init.stderr

    # the cluster is unchanged: the same three workers, processing; the run completes
    status = cluster_cli("status", cluster.external, "--json", "--secret", SECRET)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {"worker_names": list(NAMES), "worker_count": 3,
                                         "processing_messages": True}
    lines = word_lines(seed=3, lines=600)
    send_lines(ports["initializer"]["lines"], lines[:300])
    send_lines(ports["w2"]["lines"], lines[300:])
    want = Counter(" ".join(lines).split())
    wait_until(lambda: output_lines(output) >= sum(want.values()), RUN_TIMEOUT,
               "every word counted", cluster.procs.values())
    shutdown = cluster_cli("shutdown", cluster.external, env=clean_env(**{SECRET_ENV: SECRET}))
    assert shutdown.returncode == 0, shutdown.stderr
    assert cluster.wait_all() == {name: 0 for name in NAMES}, cluster.describe()
    check_counts(output, want)


@pytest.mark.parametrize("role, flag", [("initializer", "--control"), ("initializer", "--external"),
                                        ("initializer", "--data"), ("w1", "--my-data")])
def test_wildcard_address_without_secret_exits_2_before_binding(tmp_path, processes, role, flag):
    """A port on 0.0.0.0 without a secret: exit 2 with a message naming the flag and how to
    set the secret, before anything is bound (the port is held here on 127.0.0.1: binding
    0.0.0.0 on it would fail with another message)."""
    (port,) = free_ports(1)
    held = socket.socket()
    held.bind((HOST, port))
    held.listen(1)
    try:
        cluster = Cluster(processes, tmp_path, ["--in", f"lines@{HOST}:0"], external=True)
        argv = cluster.argv(role)
        if flag in argv:
            argv[argv.index(flag) + 1] = f"0.0.0.0:{port}"
        else:
            argv += [flag, f"0.0.0.0:{port}"]
        proc = processes(argv, name=f"wallaroo-run {role}", cwd=tmp_path, env=clean_env())
        assert proc.wait(10) == 2, proc.describe()
    finally:
        held.close()
    errors = [line for line in proc.stderr_lines if line.startswith("wallaroo-run: ")]
    assert len(errors) == 1, proc.describe()
    message = errors[0]
    assert f"{flag} 0.0.0.0:{port} is not a loopback address" in message, message
    assert "--cluster-secret" in message and SECRET_ENV in message, message
    assert "cannot listen" not in proc.stderr and "waiting for" not in proc.stderr, proc.describe()


# ---------------------------------------------------------------------------------------------
# 4. no initializer
# ---------------------------------------------------------------------------------------------

def test_joiner_without_initializer_gives_up_after_join_timeout(tmp_path, processes):
    (port,) = free_ports(1)   # nothing listens there
    control = f"{HOST}:{port}"
    proc = processes([WALLAROO_RUN, "--app", APP, "--control", control, "--name", "w1",
                      "--join-timeout", "1", "--input", str(tmp_path / "in.txt")],
                     name="wallaroo-run w1", cwd=tmp_path, env=clean_env())
    started = time.monotonic()
    assert proc.wait(10) == 1, proc.describe()
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"gave up after {elapsed:.1f} s, --join-timeout was 1 s"
    match = re.search(rf"^wallaroo-run: could not reach the initializer at --control "
                      rf"{re.escape(control)}: (\d+) attempts over 1 s, the last failed with: (.+)$",
                      proc.stderr, re.M)
    assert match, proc.describe()
    assert int(match[1]) >= 2, match.group(0)   # it retried
    assert "refused" in match[2].lower() or "failed" in match[2].lower(), match.group(0)
    assert not any(STARTUP_RE.match(line) for line in proc.stderr_lines), proc.describe()


# ---------------------------------------------------------------------------------------------
# 5. a worker dies
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("victim", ["w1", "w2"])
def test_killed_worker_stops_the_others(tmp_path, processes, victim):
    """kill -9 of one worker while input streams in: the other two exit non-zero within a
    bound, saying which worker was lost, and nothing of the cluster is left running."""
    output = tmp_path / "counts.txt"
    cluster = Cluster(processes, tmp_path, ["--in", f"lines@{HOST}:0", "--output", str(output)])
    cluster.start_all()
    ports = cluster.wait_started()

    stop = threading.Event()
    data = b"".join(frame(line) for line in word_lines(seed=5, lines=200))

    def feed() -> None:
        # flat out: the initializer always has input to split and records to send to the
        # others, up to the moment it is told to stop
        try:
            with socket.create_connection((HOST, ports["initializer"]["lines"]), timeout=5) as sock:
                while not stop.is_set():
                    sock.sendall(data)
        except OSError:
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        wait_until(lambda: output_lines(output) > 2000, RUN_TIMEOUT, "output flowing",
                   cluster.procs.values())
        killed_at = time.monotonic()
        os.kill(cluster.procs[victim].pid, signal.SIGKILL)
        assert cluster.procs[victim].wait(5) == -signal.SIGKILL
        others = [name for name in NAMES if name != victim]
        for name in others:
            code = cluster.procs[name].wait(max(0.1, killed_at + 10 - time.monotonic()))
            assert code != 0, f"{name} exited 0 after losing {victim}\n{cluster.procs[name].describe()}"
        took = time.monotonic() - killed_at
    finally:
        stop.set()
        feeder.join(5)
    assert took < 10, f"the others took {took:.1f} s to stop"
    # the loss is put down to the victim: its control connection closed, or a survivor's link
    # to it broke (whichever the initializer hears of first)
    lost = rf"(worker {victim} went away|its link to worker {victim} broke)"
    init = cluster.procs["initializer"]
    init.wait_stderr(rf"^wallaroo: .*{lost}.*; stopping the other workers", 0)
    for name in others:
        proc = cluster.procs[name]
        assert re.search(rf"^wallaroo-run: stopped: .*{lost}", proc.stderr, re.M), (
            f"{name} does not say it lost {victim}\n{proc.describe()}")
    for name, proc in cluster.procs.items():
        assert proc.poll() is not None and process_group_gone(proc), f"{name} left processes"
    for name in others:
        proc = cluster.procs[name]
        # stopping because another worker went away is no internal error of this one (records
        # still arriving from the others must not reach sinks that are already closed)
        assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, (
            f"{name} crashed while stopping after the loss of {victim}\n{proc.describe()}")
