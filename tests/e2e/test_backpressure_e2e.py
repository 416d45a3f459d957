"""Back-pressure across local workers: a sink that reads slowly makes every worker stop reading
its source sockets, memory stays bounded, and nothing is lost once the sink catches up.

The receiver below accepts the engine's sink connections but reads nothing until told to; the
sender pushes far more data than the bound on memory allows anyone to buffer.
"""
from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time

from support.net import HOST
from support.processes import WALLAROO_RUN, app_env, proc_status_kb

MESSAGE = 1000                    # bytes of text per message
TOTAL = 240_000                   # messages: 240 MB, far beyond the memory bound below
RSS_BOUND_MB = 150                # what a worker may hold (it runs at ~40 MB)
STALL_S = 1.5                     # the sender counts as blocked after this long without progress


class SlowReceiver:
    """Accepts the sink connections (one per worker) and counts the lines on them; it reads the
    first at full speed and the others not at all until ``release()``. So one worker's sink
    keeps up and the other's does not: the fast worker must be held back by what it sends the
    slow one."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(8)
        self.address = f"{HOST}:{self.sock.getsockname()[1]}"
        self.released = threading.Event()
        self.lines = 0
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn, len(self.conns) == 1),
                             daemon=True).start()

    def _read(self, conn, fast: bool):
        if not fast:
            self.released.wait()
        while chunk := conn.recv(1 << 20):
            with self.lock:
                self.lines += chunk.count(b"\n")

    def release(self):
        self.released.set()

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


class Sender(threading.Thread):
    """Sends TOTAL framed messages over ``connections`` sockets, round robin, as fast as the
    engine takes them; ``progress`` is the bytes the kernel has accepted so far."""

    def __init__(self, port: int, connections: int = 4):
        super().__init__(daemon=True)
        self.socks = [socket.create_connection((HOST, port)) for _ in range(connections)]
        for sock in self.socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        self.progress = 0
        self.last_progress_at = time.monotonic()
        self.error: BaseException | None = None

    def run(self):
        try:
            batch = 100
            for start in range(0, TOTAL, batch):
                data = b"".join(_message(i) for i in range(start, start + batch))
                self.socks[(start // batch) % len(self.socks)].sendall(data)
                self.progress += len(data)
                self.last_progress_at = time.monotonic()
            for sock in self.socks:
                sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stalled(self) -> bool:
        return self.is_alive() and time.monotonic() - self.last_progress_at > STALL_S


def _message(i: int) -> bytes:
    text = f"{i:08d}".encode() + b"x" * (MESSAGE - 8)
    return struct.pack(">I", len(text)) + text


def test_a_slow_sink_stops_the_sources_bounds_memory_and_loses_nothing(wallaroo_run):
    receiver = SlowReceiver()
    try:
        proc = wallaroo_run("--app", "wr_backpressure_app", "--workers", "2",
                            "--in", f"in@{HOST}:0", "--out", receiver.address)
        match, ports = proc.startup()
        pids = [int(p) for p in match["rest"].rsplit("(pids ", 1)[1].rstrip(")").split(", ")]
        assert len(pids) == 2
        sender = Sender(ports["in"])
        sender.start()

        # the sinks cannot write: the engine stops reading the source sockets
        deadline = time.monotonic() + 60
        while not sender.stalled():
            assert sender.is_alive(), f"the engine took everything: {sender.error}\n{proc.describe()}"
            assert time.monotonic() < deadline, "the sender never blocked"
            time.sleep(0.1)
        accepted = sender.progress
        assert accepted < TOTAL * (MESSAGE + 4) / 2, "more than half of the input was taken in"
        # it stays stopped, and no worker holds more than the bound
        time.sleep(1.0)
        assert sender.progress == accepted
        for pid in pids:
            rss_mb = proc_status_kb(pid, "VmRSS") / 1024
            assert rss_mb < RSS_BOUND_MB, f"worker {pid} holds {rss_mb:.0f} MB"

        # the sink catches up: everything arrives, nothing lost
        receiver.release()
        sender.join(120)
        assert not sender.is_alive() and sender.error is None, sender.error
        deadline = time.monotonic() + 60
        while receiver.lines < TOTAL and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.lines == TOTAL, f"{receiver.lines:,} of {TOTAL:,} messages arrived"
        for pid in pids:
            assert proc_status_kb(pid, "VmHWM") / 1024 < RSS_BOUND_MB, f"worker {pid} peaked high"
        proc.signal(15)
        assert proc.wait(30) == 0, proc.describe()
    finally:
        receiver.close()


def test_a_stop_with_a_sink_that_never_reads_ends_after_the_flush_timeout(wallaroo_run):
    """SIGTERM while one worker's sink never reads: messages stay on their way to it, so the
    run cannot end cleanly; it ends once --flush-timeout has passed, exit 1, saying what was
    not delivered, and leaves no worker behind."""
    receiver = SlowReceiver()
    try:
        proc = wallaroo_run("--app", "wr_backpressure_app", "--workers", "2", "--flush-timeout", "2",
                            "--in", f"in@{HOST}:0", "--out", receiver.address)
        match, ports = proc.startup()
        pids = [int(p) for p in match["rest"].rsplit("(pids ", 1)[1].rstrip(")").split(", ")]
        sender = Sender(ports["in"])
        sender.start()
        deadline = time.monotonic() + 60
        while not sender.stalled():
            assert time.monotonic() < deadline, "the sender never blocked"
            time.sleep(0.1)
        stopped_at = time.monotonic()
        proc.signal(15)
        assert proc.wait(20) == 1, proc.describe()
        assert time.monotonic() - stopped_at < 12, "the stop took too long"
        # what was still on its way between workers, or in the sink, is reported
        assert re.search(r"not (fully )?delivered", proc.stderr), proc.describe()
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"worker {pid} left running"
    finally:
        receiver.close()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_second_signal_ends_a_tcp_cluster_without_waiting(processes, tmp_path):
    """A TCP cluster of two whose sink never reads, stopped with SIGTERM twice on the
    initializer: the second request ends the run at once (not after --flush-timeout)."""
    receiver = SlowReceiver()
    try:
        ports = [_free_port() for _ in range(2)]
        common = ["--app", "wr_backpressure_app", "--flush-timeout", "60",
                  "--out", receiver.address, "--control", f"{HOST}:{ports[0]}",
                  "--resilience-dir", str(tmp_path / "run")]
        init = processes([WALLAROO_RUN, *common, "--cluster-initializer", "--worker-count", "2",
                          "--data", f"{HOST}:{ports[1]}", "--in", f"in@{HOST}:0"],
                         name="initializer", cwd=tmp_path, env=app_env(), timeout=20)
        other = processes([WALLAROO_RUN, *common, "--name", "w1", "--in", f"in@{HOST}:0"],
                          name="w1", cwd=tmp_path, env=app_env(), timeout=20)
        _, in_ports = init.startup()
        other.startup()
        sender = Sender(in_ports["in"], connections=2)
        sender.start()
        deadline = time.monotonic() + 60
        while not sender.stalled():
            assert time.monotonic() < deadline, "the sender never blocked"
            time.sleep(0.1)
        init.signal(15)
        init.wait_stderr(r"stopping: every worker stops its input")
        stopped_at = time.monotonic()
        init.signal(15)
        assert init.wait(20) == 1, init.describe()
        assert other.wait(20) == 1, other.describe()
        assert time.monotonic() - stopped_at < 15, "the second request did not end the run"
        assert "second stop request" in init.stderr, init.describe()
    finally:
        receiver.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
