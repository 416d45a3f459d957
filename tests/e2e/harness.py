"""Run example applications end to end, as a user would, with real processes.

A test gets a :class:`Harness` from the ``harness`` fixture (conftest.py) and

1. starts ``wallaroo receive`` on port 0 and learns its port from stderr,
2. starts ``wallaroo-run`` in the example's folder with every TCP source on
   port 0 and the sink pointed at the receiver, and learns the source ports
   from the startup line on stderr,
3. feeds the sources with ``wallaroo send``,
4. waits for ``wallaroo receive --expect N`` to exit 0, and
5. stops ``wallaroo-run`` with SIGTERM and checks it exits 0.

Everything started is killed in teardown. Only 127.0.0.1 is used. The processes are
:class:`support.processes.Proc` (tests/support/processes.py): stdout and stderr are collected
apart, and every ready line is read from stderr.

The executables are the ones next to the running interpreter (.venv/bin);
``WALLAROO_E2E_RUN=/path/to/wallaroo-run`` points the tests at another engine.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import processes
from support.net import HOST
from support.processes import LISTENING_RE, SOURCE_RE, STARTUP_RE, WALLAROO, Proc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
WALLAROO_RUN = os.environ.get("WALLAROO_E2E_RUN", processes.WALLAROO_RUN)

START_TIMEOUT = 20.0      # seconds for a process to print its ready line
RUN_TIMEOUT = 30.0        # seconds for the expected output to arrive
STOP_TIMEOUT = 15.0       # seconds for wallaroo-run to exit after SIGTERM


@dataclass
class App:
    """A running ``wallaroo-run`` and what its startup line said."""

    proc: Proc
    name: str
    sources: dict[str, int] = field(default_factory=dict)   # TCP source name -> port
    startup_line: str = ""

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        self.proc.signal(signal.SIGTERM)
        return self.proc.wait(STOP_TIMEOUT)


@dataclass
class Receiver:
    proc: Proc
    port: int
    output: Path

    def wait_done(self, timeout: float = RUN_TIMEOUT + 5) -> bytes:
        """Wait for ``--expect`` to be reached (exit 0) and return what was written."""
        code = self.proc.wait(timeout)
        data = self.output.read_bytes() if self.output.exists() else b""
        assert code == 0, (f"wallaroo receive exited with {code}; {len(data)} bytes arrived:\n"
                           f"{data[-2000:]!r}\n{self.proc.describe()}")
        return data

    def wait_for_lines(self, count: int, timeout: float = RUN_TIMEOUT) -> None:
        """Wait until the output file holds at least ``count`` newline-terminated lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.output.exists() and self.output.read_bytes().count(b"\n") >= count:
                return
            assert self.proc.poll() is None, self.proc.describe()
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} lines arrived within {timeout:g} s")

    def stop(self) -> bytes:
        """SIGTERM (exit 0 expected) and return what was written."""
        self.proc.signal(signal.SIGTERM)
        code = self.proc.wait(STOP_TIMEOUT)
        assert code == 0, self.proc.describe()
        return self.output.read_bytes()


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []
        self._counter = 0

    def start(self, name: str, argv: list[str], **kwargs) -> Proc:
        """Start a :class:`Proc` (same keyword arguments); its waits default to START_TIMEOUT."""
        proc = Proc(argv, name=name, timeout=START_TIMEOUT, **kwargs)
        self.procs.append(proc)
        return proc

    def receiver(self, expect: int | None, framed: bool = False, raw: bool = False,
                 timeout: float = RUN_TIMEOUT) -> Receiver:
        """Start ``wallaroo receive``; with ``expect=None`` it runs until stopped."""
        self._counter += 1
        output = self.tmp_path / f"received-{self._counter}.out"
        argv = [WALLAROO, "receive", "--listen", f"{HOST}:0", "--output", str(output)]
        if expect is not None:
            argv += ["--expect", str(expect), "--timeout", str(timeout)]
        if framed:
            argv.append("--framed")
        if raw:
            argv.append("--raw")
        proc = self.start("wallaroo receive", argv)
        match = proc.wait_stderr(LISTENING_RE)
        return Receiver(proc, int(match["port"]), output)

    def app(self, example: str, module: str, sources: list[str], out_port: int,
            app_args: list[str] = (), original_style: bool = False,
            cwd: Path | None = None, env: dict[str, str] | None = None,
            extra_engine_args: list[str] = ()) -> App:
        """Start ``wallaroo-run`` for ``examples/<example>/<module>.py``.

        Every TCP source in ``sources`` is put on port 0 with ``--in``.
        """
        argv = [WALLAROO_RUN]
        argv += ["--application-module", module] if original_style else ["--app", module]
        if sources:
            argv += ["--in", ",".join(f"{name}@{HOST}:0" for name in sources)]
        argv += ["--out", f"{HOST}:{out_port}", *extra_engine_args, *app_args]
        proc = self.start(f"wallaroo-run {module}", argv, cwd=cwd or EXAMPLES / example, env=env)
        match = proc.wait_stderr(STARTUP_RE)
        found = {source["name"]: int(source["port"]) for source in SOURCE_RE.finditer(match["rest"])}
        missing = [name for name in sources if name not in found]
        assert not missing, (f"the startup line names no TCP source {missing}:\n{match.group(0)}\n"
                             f"{proc.describe()}")
        assert all(port > 0 for port in found.values()), match.group(0)
        assert f"sink tcp://{HOST}:{out_port}" in match.group(0), (
            f"the startup line does not show the --out sink:\n{match.group(0)}")
        return App(proc, match.group("app"), found, match.group(0))

    def send(self, port: int, path: Path, binary: bool = False, timeout: float = RUN_TIMEOUT) -> None:
        """Run ``wallaroo send`` to completion; it must exit 0."""
        argv = [WALLAROO, "send", "--host", f"{HOST}:{port}", "--file", str(path), "--batch-size", "200"]
        if binary:
            argv.append("--binary")
        proc = self.start("wallaroo send", argv)
        code = proc.wait(timeout)
        assert code == 0, f"wallaroo send exited with {code}\n{proc.describe()}"

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.kill()


def split_frames(data: bytes) -> list[bytes]:
    """Payloads of a buffer of u32-BE-length frames; the buffer must end on a frame boundary."""
    payloads = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 4, f"truncated header at byte {pos}"
        length = int.from_bytes(data[pos:pos + 4], "big")
        end = pos + 4 + length
        assert end <= len(data), f"truncated frame at byte {pos}"
        payloads.append(data[pos + 4:end])
        pos = end
    return payloads
