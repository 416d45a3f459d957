"""A 3-worker TCP cluster across three network namespaces, as if on three hosts.

The ``netns`` fixture builds a small network: namespaces ``wr-<random>-0``, ``-1`` and ``-2``
(the "hosts"), each with ``lo`` up and one veth ``eth0`` holding ``10.213.N.1``, ``.2`` or
``.3``/24, whose peers are ports of a Linux bridge in a fourth namespace ``wr-<random>-br``.
Every worker runs with ``ip netns exec NS wallaroo-run ...`` and binds its --control, --data or
--my-data to its own namespace address; those are not loopback addresses, so every worker has
the cluster secret. Every client (``wallaroo send``, ``wallaroo cluster``) runs inside one of
the namespaces too: nothing here contacts an address outside them. The fixture removes all of
it (``ip netns del``), whatever the test did.

Needs root and iproute2 (``ip``; Debian: ``apt-get install -y iproute2``); the tests are
skipped, saying why, only when the namespaces cannot be made.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from random import Random

import pytest

from support.processes import STARTUP_RE, SOURCE_RE, WALLAROO, WALLAROO_RUN, Proc, app_env
from wallaroo.cluster.auth import SECRET_ENV

pytestmark = pytest.mark.timeout(90)

APP = "wr_cluster_app"
APP_NAME = "Cluster Word Count"
NAMES = ("initializer", "w1", "w2")
SECRET = "netns-s3cret"
CONTROL_PORT, DATA_PORT, EXTERNAL_PORT = 7000, 7001, 7002   # each namespace has its own ports
TIMEOUT = 20.0
LINE_RE = re.compile(r"^(?P<word>\S+) => (?P<count>\d+)$")


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------

def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


@dataclass
class Net:
    namespaces: list[str]     # the three "hosts"
    bridge: str               # the namespace holding the bridge
    addresses: list[str]      # the address of each host, by index

    def exec(self, index: int, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``index``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[index], *map(str, argv)]


# one Python process per namespace: can it reach the others? A refused connection (RST) means
# the address answered; a timeout means the network is not there.
_PROBE = """
import socket, sys
for address in sys.argv[1:]:
    try:
        socket.create_connection((address, 9), timeout=3).close()
    except ConnectionRefusedError:
        continue
    except OSError as exc:
        sys.exit(f"{address}: {exc}")
"""


@pytest.fixture
def netns():
    """Three namespaces linked by a bridge (see the module docstring); removed in teardown."""
    if sys.platform != "linux":
        pytest.skip("network namespaces are Linux only")
    if shutil.which("ip") is None:
        pytest.skip("no 'ip' command: install iproute2 (apt-get install -y iproute2)")
    if os.geteuid() != 0:
        pytest.skip(f"creating network namespaces needs root (this runs as uid {os.geteuid()})")
    tag = f"wr-{secrets.token_hex(3)}"
    subnet = f"10.213.{Random().randint(1, 254)}"
    bridge = f"{tag}-br"
    created: list[str] = []

    def run(*args: str) -> None:
        result = _ip(*args)
        assert result.returncode == 0, f"ip {' '.join(args)} failed: {result.stderr.strip()}"

    first = _ip("netns", "add", bridge)
    if first.returncode != 0:
        _ip("netns", "del", bridge)   # in case it got half made
        pytest.skip(f"cannot create a network namespace (ip netns add: {first.stderr.strip()})")
    created.append(bridge)
    try:
        run("-n", bridge, "link", "set", "lo", "up")
        run("-n", bridge, "link", "add", "br0", "type", "bridge")
        run("-n", bridge, "link", "set", "br0", "up")
        net = Net([], bridge, [])
        for i in range(3):
            ns = f"{tag}-{i}"
            run("netns", "add", ns)
            created.append(ns)
            run("-n", ns, "link", "set", "lo", "up")
            run("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"v{i}", "netns", bridge)
            run("-n", bridge, "link", "set", f"v{i}", "master", "br0")
            run("-n", bridge, "link", "set", f"v{i}", "up")
            run("-n", ns, "addr", "add", f"{subnet}.{i + 1}/24", "dev", "eth0")
            run("-n", ns, "link", "set", "eth0", "up")
            net.namespaces.append(ns)
            net.addresses.append(f"{subnet}.{i + 1}")
        for i in range(3):
            others = [a for j, a in enumerate(net.addresses) if j != i]
            probe = subprocess.run(net.exec(i, [sys.executable, "-c", _PROBE, *others]),
                                   capture_output=True, text=True, timeout=30)
            assert probe.returncode == 0, (f"{net.namespaces[i]} cannot reach the other "
                                           f"namespaces: {probe.stderr.strip()}")
        yield net
    finally:
        problems = [f"{ns}: {r.stderr.strip()}" for ns in reversed(created)
                    if (r := _ip("netns", "del", ns)).returncode != 0]
        left = [ns for ns in created if ns in _ip("netns", "list").stdout]
        assert not problems and not left, f"namespaces not removed: {problems or left}"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def word_lines(seed: int, lines: int, vocabulary: int = 120, per_line: int = 8) -> list[str]:
    rng = Random(seed)
    words = [f"word{i}" for i in range(vocabulary)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, per_line)))
            for _ in range(lines)]


def clean_env(**extra: str) -> dict[str, str]:
    env = app_env()
    env.pop(SECRET_ENV, None)
    env.update(extra)
    return env


def part_files(output: Path) -> dict[int, Path]:
    return {int(p.name.rsplit("-", 1)[1]): p for p in output.parent.glob(output.name + ".part-*")}


def output_lines(output: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in part_files(output).values())


def check_counts(output: Path, want: Counter) -> None:
    """Every word's lines ``word => 1`` .. ``word => N`` in order, all in one part, N its count."""
    parts = part_files(output)
    assert sorted(parts) == [0, 1, 2], sorted(parts)
    seen: dict[str, list[int]] = {}
    owner: dict[str, int] = {}
    for index, path in parts.items():
        text = path.read_text(encoding="utf-8")
        assert text == "" or text.endswith("\n"), f"{path} ends inside a line"
        assert text, f"worker {index} wrote nothing"
        for line in text.splitlines():
            match = LINE_RE.match(line)
            assert match, f"{path}: unexpected line {line!r}"
            word = match["word"]
            assert owner.setdefault(word, index) == index, f"{word!r} in parts {owner[word]} and {index}"
            seen.setdefault(word, []).append(int(match["count"]))
    got = Counter({word: counts[-1] for word, counts in seen.items()})
    assert got == want, f"final counts differ: {sorted((got - want) | (want - got))[:10]}"
    bad = {w: c for w, c in seen.items() if c != list(range(1, len(c) + 1))}
    assert not bad, f"counts not 1..N in order: {dict(list(bad.items())[:5])}"


def worker_argv(net: Net, index: int, app_args: list[str], *, secret: str | None = SECRET,
                my_data: bool = True, external: bool = False, run_dir: Path | None = None) -> list[str]:
    """``ip netns exec NS_index wallaroo-run ...`` for worker ``index`` (0: the initializer)."""
    control = f"{net.addresses[0]}:{CONTROL_PORT}"
    own = net.addresses[index]
    argv = [WALLAROO_RUN, "--app", APP, "--control", control]
    if index == 0:
        argv += ["--cluster-initializer", "--worker-count", "3", "--data", f"{own}:{DATA_PORT}"]
        if external:
            argv += ["--external", f"{own}:{EXTERNAL_PORT}"]
    else:
        argv += ["--name", NAMES[index]]
        if my_data:
            argv += ["--my-data", f"{own}:{DATA_PORT}"]
    if secret is not None:
        argv += ["--cluster-secret", secret]
    if run_dir is not None:
        argv += ["--resilience-dir", str(run_dir)]
    return net.exec(index, argv + app_args)


def start_cluster(net: Net, processes, cwd: Path, app_args, **kwargs) -> dict[str, Proc]:
    """Worker i in namespace i (w1 without --my-data); the initializer first, the others once
    its control port listens. ``app_args(i)``: the app args of worker i."""
    procs = {}
    for index, name in enumerate(NAMES):
        procs[name] = processes(worker_argv(net, index, app_args(index), my_data=(name != "w1"),
                                            **kwargs),
                                name=f"wallaroo-run {name} in {net.namespaces[index]}", cwd=cwd,
                                env=clean_env(), timeout=TIMEOUT)
        if index == 0:
            procs[name].wait_stderr(r"^wallaroo: initializer: waiting for 3 worker\(s\) on --control "
                                    + re.escape(f"{net.addresses[0]}:{CONTROL_PORT}") + "$")
    return procs


def describe(procs) -> str:
    return "\n".join(proc.describe() for proc in procs.values())


def check_formed(net: Net, procs: dict[str, Proc]) -> None:
    control = re.escape(f"{net.addresses[0]}:{CONTROL_PORT}")
    procs["initializer"].wait_stderr(r"^wallaroo: cluster ready: 3 workers \(initializer, w\d, w\d\)$")
    for name, proc in procs.items():
        proc.wait_stderr(rf"^wallaroo: connected to the initializer at {control}$")
        proc.wait_stderr(r"^wallaroo: ready: linked to 2 other worker\(s\) over TCP$")
        match = proc.wait_stderr(STARTUP_RE)
        assert re.search(rf"\| worker {name} \([123] of 3\)$", match["rest"]), match.group(0)


def cluster_cli(net: Net, index: int, command: str, *args: str, env=None,
                timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``wallaroo cluster COMMAND`` run inside host ``index``, against the initializer's
    external port."""
    argv = net.exec(index, [WALLAROO, "cluster", command, "--external",
                            f"{net.addresses[0]}:{EXTERNAL_PORT}", *args])
    return subprocess.run(argv, env=env or clean_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

def test_word_count_of_a_file_across_three_namespaces(tmp_path, netns, processes):
    """The same input file given to every worker, each reading its byte range; the union of
    the part files has the right count for every word; all exit 0."""
    lines = word_lines(seed=11, lines=3000)
    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    output = tmp_path / "counts.txt"
    app_args = ["--input", str(source), "--output", str(output)]

    # a non-loopback address without the secret: refused before anything is bound
    bare = processes(worker_argv(netns, 0, app_args, secret=None), name="wallaroo-run no secret",
                     cwd=tmp_path, env=clean_env())
    assert bare.wait(10) == 2, bare.describe()
    assert f"--control {netns.addresses[0]}:{CONTROL_PORT}" in bare.stderr, bare.describe()
    assert "--cluster-secret" in bare.stderr and SECRET_ENV in bare.stderr, bare.describe()
    # a joiner without --my-data takes data on the address it reaches the initializer from,
    # which is not loopback here: without the secret it refuses to start, before it binds
    joiner = processes(worker_argv(netns, 1, app_args, secret=None, my_data=False),
                       name="wallaroo-run joiner without secret", cwd=tmp_path, env=clean_env())
    assert joiner.wait(10) == 1, joiner.describe()
    assert f"on {netns.addresses[1]} (the address it reaches --control from)" in joiner.stderr, \
        joiner.describe()
    assert "--cluster-secret" in joiner.stderr, joiner.describe()

    procs = start_cluster(netns, processes, tmp_path, lambda i: app_args, run_dir=tmp_path / "run")
    codes = {name: proc.wait(TIMEOUT) for name, proc in procs.items()}
    assert codes == {name: 0 for name in NAMES}, describe(procs)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [], "run files left"
    check_formed(netns, procs)
    check_counts(output, Counter(" ".join(lines).split()))
    for proc in procs.values():
        assert "Traceback" not in proc.stderr, proc.describe()


def test_tcp_cluster_across_namespaces_status_and_shutdown(tmp_path, netns, processes):
    """TCP sources fed by ``wallaroo send`` from another namespace; ``wallaroo cluster``
    from the namespaces of w1 and w2 (refused with a wrong secret); w1 gives no --my-data and
    is reached at its own namespace's address; shutdown ends the run cleanly with every word
    counted."""
    output = tmp_path / "counts.txt"
    run_dir = tmp_path / "run"
    procs = start_cluster(netns, processes, tmp_path,
                          lambda i: ["--in", f"lines@{netns.addresses[i]}:0", "--output", str(output)],
                          external=True, run_dir=run_dir)
    check_formed(netns, procs)
    ports = {}
    for name, proc in procs.items():
        match = proc.wait_stderr(STARTUP_RE)
        (source,) = list(SOURCE_RE.finditer(match["rest"]))
        assert source["host"] == netns.addresses[NAMES.index(name)], match.group(0)
        ports[name] = int(source["port"])

    status = cluster_cli(netns, 2, "status", "--json", "--secret", SECRET)
    assert status.returncode == 0, status.stderr
    reply = json.loads(status.stdout)
    assert sorted(reply["worker_names"]) == sorted(NAMES), reply
    assert reply["worker_count"] == 3 and reply["processing_messages"] is True, reply
    wrong = cluster_cli(netns, 1, "shutdown", "--secret", "wrong")
    assert wrong.returncode == 1 and "refused this client" in wrong.stderr, wrong

    # the run files: w1's data port is on its own namespace's address
    infos = {name: json.loads((run_dir / f"{APP_NAME.replace(' ', '_')}-{name}.worker.json").read_text())
             for name in NAMES}
    for name, info in infos.items():
        assert info["data"].rpartition(":")[0] == netns.addresses[NAMES.index(name)], info
    workers = {w["name"]: w["data"] for w in infos["initializer"]["workers"]}
    assert workers == {name: infos[name]["data"] for name in NAMES}, workers

    # input from other namespaces: w1's host feeds the initializer, the initializer's host w2
    lines = word_lines(seed=12, lines=1200)
    feeds = [(1, "initializer", lines[:600]), (0, "w2", lines[600:])]
    for k, (host, target, chunk) in enumerate(feeds):
        path = tmp_path / f"feed-{k}.txt"
        path.write_text("".join(line + "\n" for line in chunk), encoding="utf-8")
        address = f"{netns.addresses[NAMES.index(target)]}:{ports[target]}"
        send = processes(netns.exec(host, [WALLAROO, "send", "--host", address, "--file", path,
                                           "--batch-size", "100"]),
                         name=f"wallaroo send from {netns.namespaces[host]}", cwd=tmp_path,
                         env=clean_env())
        assert send.wait(TIMEOUT) == 0, send.describe()
    want = Counter(" ".join(lines).split())
    deadline = time.monotonic() + TIMEOUT
    while output_lines(output) < sum(want.values()):
        assert time.monotonic() < deadline, f"not every word counted\n{describe(procs)}"
        assert all(p.poll() is None for p in procs.values()), describe(procs)
        time.sleep(0.05)

    shutdown = cluster_cli(netns, 1, "shutdown", env=clean_env(**{SECRET_ENV: SECRET}))
    assert shutdown.returncode == 0, shutdown.stderr
    codes = {name: proc.wait(TIMEOUT) for name, proc in procs.items()}
    assert codes == {name: 0 for name in NAMES}, describe(procs)
    check_counts(output, want)
    assert sorted(p.name for p in run_dir.iterdir()) == [], "run files left after shutdown"
