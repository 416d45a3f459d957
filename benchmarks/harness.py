"""The runner's plumbing: forked children, ``wallaroo-run`` processes, a receiver, senders.

Everything here talks to 127.0.0.1 only. Times that cross processes use ``time.monotonic()``
(CLOCK_MONOTONIC is one clock for the whole machine on Linux); send timestamps carried in
payloads use ``time.time_ns()``, like the engine's ingest times.

Example::

    >>> in_child(lambda: 6 * 7)[0]
    42
"""
from __future__ import annotations

import gc
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
STARTUP_RE = re.compile(r'^wallaroo: running "(?P<app>[^"]*)" \(pid (?P<pid>\d+)\) \| (?P<rest>.*)$')
SOURCE_RE = re.compile(r'source "(?P<name>[^"]+)" at tcp://(?P<host>[0-9.]+):(?P<port>\d+)')


class BenchmarkError(RuntimeError):
    """A run went wrong (a process failed, a deadline passed, data went missing)."""


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS of the process's own memory map) of ``pid``, in bytes; empty
    once the process has exited.

    Unlike ``ru_maxrss``, VmHWM starts afresh at ``exec``: on Linux ``ru_maxrss`` of a process
    started by a large one (fork or vfork, then exec) includes the parent's peak.
    """
    found = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"VmRSS:", b"VmHWM:")):
                    key, value = line.split(b":", 1)
                    found[key.decode()] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found


_child_start_rss = 0


def rss_growth() -> int:
    """In a child of :func:`in_child`: its peak RSS so far minus its RSS when it started."""
    status = proc_status()
    return max(0, status.get("VmHWM", 0) - _child_start_rss)


def in_child(fn: Callable, *args):
    """Run ``fn(*args)`` in a forked child; return ``(its result, the child's RSS growth)``.

    The child starts as a copy of this process (inputs already built, nothing to pickle on the
    way in) and its garbage stays out of this process. Objects that existed before the fork are
    frozen out of the child's garbage collector (``gc.freeze``), so the engine and the plain
    loop both run without re-scanning the runner's data. RSS growth is the child's peak RSS
    minus its RSS at the start (what the run itself allocated; the pages it shares with this
    process are not new). An exception in the child is raised here with its traceback.
    """
    global _child_start_rss
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        try:
            gc.freeze()
            _reset_peak_rss()
            _child_start_rss = proc_status().get("VmRSS", 0)
            result = fn(*args)
            payload = pickle.dumps(("ok", result, rss_growth()))
        except BaseException as exc:  # noqa: B902 - report everything to the parent
            payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}\n"
                                             f"{traceback.format_exc()}", 0))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
        os._exit(0)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
    finally:
        os.waitpid(pid, 0)
    if not data:
        raise BenchmarkError("a benchmark child process died without a result")
    status, result, rss = pickle.loads(data)
    if status != "ok":
        raise BenchmarkError(f"in a benchmark child process: {result}")
    return result, rss


def _reset_peak_rss() -> None:
    """Make VmHWM the current RSS (``5`` to /proc/self/clear_refs), where the kernel allows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# --- wallaroo-run --------------------------------------------------------------------------------

def _wallaroo_run_command() -> list[str]:
    script = Path(sys.executable).parent / "wallaroo-run"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from wallaroo.cli import run_main; run_main()"]


class Engine:
    """A ``wallaroo-run`` process running a benchmark workload's app.

    stderr is read by a thread (so the process never blocks on it); ``wait_started`` returns
    the TCP sources' ports from the startup line; ``stop`` sends SIGTERM and waits; ``stats``
    reads the ``--stats-file`` JSON written at exit.
    """

    def __init__(self, workload: str, tmp: Path, extra: list[str], tag: str = "engine"):
        self.stats_path = tmp / f"{tag}.stats.json"
        if self.stats_path.exists():
            self.stats_path.unlink()
        cmd = [*_wallaroo_run_command(), "--app", "benchmarks.workloads:application_setup",
               "--bench-workload", workload, "--stats-file", str(self.stats_path),
               "--no-progress", *extra]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._startup: re.Match | None = None
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        #: The engine's peak RSS (VmHWM of its own memory map), polled every 20 ms.
        self.peak_rss = 0
        self._poller = threading.Thread(target=self._poll_rss, daemon=True)
        self._poller.start()

    def _poll_rss(self) -> None:
        while self.proc.poll() is None:
            hwm = proc_status(self.pid).get("VmHWM")
            if hwm:
                self.peak_rss = max(self.peak_rss, hwm)
            time.sleep(0.02)

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if self._startup is None and (m := STARTUP_RE.match(line)):
                self._startup = m
                self._started.set()
        self._started.set()

    def describe(self) -> str:
        return "wallaroo-run said:\n  " + "\n  ".join(self.lines[-30:])

    def wait_started(self, timeout: float = 60) -> dict[str, int]:
        """Wait for the startup line; return ``{source name: port}`` of its TCP sources."""
        if not self._started.wait(timeout) or self._startup is None:
            self.kill()
            raise BenchmarkError(f"wallaroo-run did not start within {timeout} s. "
                                 f"{self.describe()}")
        return {m["name"]: int(m["port"]) for m in SOURCE_RE.finditer(self._startup["rest"])}

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchmarkError(f"wallaroo-run did not finish within {timeout} s. "
                                 f"{self.describe()}") from None
        self._reader.join(5)
        if code != 0:
            raise BenchmarkError(f"wallaroo-run exited with {code}. {self.describe()}")
        return code

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM: stop reading, flush the sinks, exit; wait for it."""
        hwm = proc_status(self.pid).get("VmHWM")
        if hwm:
            self.peak_rss = max(self.peak_rss, hwm)
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()

    def stats(self) -> dict:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError) as exc:
            raise BenchmarkError(f"no --stats-file from wallaroo-run ({exc}). "
                                 f"{self.describe()}") from None


# --- receiving ---------------------------------------------------------------------------------

class Receiver:
    """A TCP server on 127.0.0.1 (a thread) taking what one sink connection writes.

    ``keep`` keeps the bytes (``data``, ``tail``); ``stamps`` also keeps, per read, its end offset and
    ``time.time_ns()`` (for outside latency). ``watch(receiver)``, if given, runs after every
    read on the receiving thread. ``last_read`` is the ``time.monotonic()`` of the latest read.
    """

    def __init__(self, keep: bool = True, stamps: bool = False,
                 watch: Callable[["Receiver"], None] | None = None):
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.keep, self.stamps, self.watch = keep, stamps, watch
        # Reads are kept as a list: growing one buffer would copy it (holding the GIL for
        # tens of ms once it is large) and stall the sender threads of this process.
        self.chunks: list[bytes] = []
        self._joined: bytes | None = None
        self.nbytes = 0
        self.newlines = 0
        self.read_ends: list[int] = []
        self.read_times: list[int] = []
        self.last_read = 0.0
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.changed = threading.Condition()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "Receiver":
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            self.connected.set()
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            with conn:
                while True:
                    n = conn.recv_into(buf)
                    if n == 0:
                        break
                    now = time.monotonic()
                    if self.keep:
                        self.chunks.append(bytes(view[:n]))
                    self.newlines += buf.count(b"\n", 0, n)
                    self.nbytes += n
                    if self.stamps:
                        self.read_ends.append(self.nbytes)
                        self.read_times.append(time.time_ns())
                    self.last_read = now
                    if self.watch is not None:
                        self.watch(self)
                    with self.changed:
                        self.changed.notify_all()
        except BaseException as exc:  # noqa: B902 - reported by wait_for
            self.error = exc
        finally:
            self.closed.set()
            self.listener.close()
            with self.changed:
                self.changed.notify_all()

    @property
    def data(self) -> bytes:
        """Everything received so far (with ``keep``)."""
        if self._joined is None or len(self._joined) != self.nbytes:
            self._joined = b"".join(self.chunks)
        return self._joined

    def tail(self, size: int) -> bytes:
        """The last ``size`` bytes received (with ``keep``), without joining everything."""
        out = b""
        for chunk in reversed(self.chunks):
            out = chunk + out
            if len(out) >= size:
                break
        return out[-size:]

    def wait_for(self, predicate: Callable[["Receiver"], bool], timeout: float, what: str) -> None:
        """Wait until ``predicate(self)`` holds (checked after every read)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self):
                if self.error is not None:
                    raise BenchmarkError(f"receiver failed: {self.error!r}")
                left = deadline - time.monotonic()
                if left <= 0 or (self.closed.is_set() and not predicate(self)):
                    raise BenchmarkError(
                        f"waiting for {what}: {'the connection closed' if self.closed.is_set() else f'{timeout:g} s passed'}"
                        f" with {self.nbytes:,} bytes received")
                self.changed.wait(min(left, 0.5))

    def wait_closed(self, timeout: float) -> None:
        if not self.closed.wait(timeout):
            raise BenchmarkError(f"the sink connection did not close within {timeout:g} s "
                                 f"({self.nbytes:,} bytes received)")

    def close(self) -> None:
        try:
            self.listener.close()
        except OSError:
            pass


def connect(port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` (retrying while it is refused), Nagle off."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((HOST, port), timeout=timeout)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_all(socks: dict[str, socket.socket], data: dict[str, bytes]) -> list[threading.Thread]:
    """Start one thread per source writing its whole buffer (flat out); return the threads."""
    threads = [threading.Thread(target=socks[name].sendall, args=(data[name],), daemon=True)
               for name in data]
    for t in threads:
        t.start()
    return threads


class PacedSender:
    """Sends frames at a fixed rate (messages/s), in a thread, stamping each with the send time.

    Every ``interval`` seconds it sends the messages due by then, in one write; the 8 bytes after
    each frame's length header are set to ``time.time_ns()`` just before the write. ``frames``
    is cycled if the run outlasts it. ``sent`` counts messages; ``lines`` counts the outputs
    they should give, from ``outputs_per_frame`` (a list, one per frame).
    """

    def __init__(self, sock: socket.socket, frames: list[bytes], rate: float, seconds: float,
                 outputs_per_frame: list[int] | None = None, interval: float = 0.001,
                 stamp: bool = True):
        self.sock, self.rate, self.seconds, self.interval = sock, rate, seconds, interval
        self.stamp = stamp
        self.big = b"".join(frames)
        starts = [0]
        for f in frames:
            starts.append(starts[-1] + len(f))
        self.starts = starts
        self.count = len(frames)
        self.outputs = outputs_per_frame
        self.sent = 0
        self.expected_outputs = 0
        self.lag = 0.0  # the longest a write started after it was due (seconds)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "PacedSender":
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise BenchmarkError(f"paced sender failed: {self.error!r}")

    def _segment(self, i: int, k: int, stamp: bytes) -> bytearray:
        starts = self.starts
        base = starts[i]
        seg = bytearray(self.big[base:starts[i + k]])
        if self.stamp:
            for s in starts[i:i + k]:
                at = s - base + 4
                seg[at:at + 8] = stamp
        if self.outputs is not None:
            self.expected_outputs += sum(self.outputs[i:i + k])
        return seg

    def _run(self) -> None:
        try:
            rate, interval, count = self.rate, self.interval, self.count
            start = time.monotonic()
            tick, at = 0, 0
            while True:
                now = time.monotonic()
                elapsed = now - start
                if elapsed >= self.seconds:
                    break
                self.lag = max(self.lag, now - (start + tick * interval))
                due = int(rate * elapsed) - self.sent
                stamp = time.time_ns().to_bytes(8, "big")
                while due > 0:
                    k = min(due, count - at)
                    self.sock.sendall(self._segment(at, k, stamp))
                    self.sent += k
                    due -= k
                    at = (at + k) % count
                tick += 1
                pause = start + tick * interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        except BaseException as exc:  # noqa: B902 - reported by join
            self.error = exc


def rss_of(pid: int) -> int:
    """Resident set size of process ``pid`` now (bytes)."""
    import psutil

    return psutil.Process(pid).memory_info().rss
