"""Child processes in tests: one wrapper, :class:`Proc`, and what the wallaroo tools print.

Every test that starts ``wallaroo-run``, ``wallaroo send`` or ``wallaroo receive`` and deals
with it while it runs goes through :class:`Proc`:

- stdout is collected as bytes and stderr as decoded lines, each by a background thread, so a
  child never blocks on a full pipe and a test can look at its output at any time;
- :meth:`Proc.wait_stderr` waits for a stderr line matching a regex and :meth:`Proc.wait` for
  the exit code, each with a deadline; both fail with :meth:`Proc.describe` (command, state,
  all of stderr, the end of stdout), which also serves assertion messages;
- the child leads its own session, so :meth:`Proc.kill` (teardown) kills it together with
  any worker it spawned.

Runs that end by themselves and need nothing while they run use :func:`run_cli`
(``subprocess.run``, output captured).

The startup lines the tools print, matched by the regexes below::

    wallaroo: running "APP" (pid N) | source "NAME" at tcp://HOST:PORT | ... | sink ...
    wallaroo receive: listening on HOST:PORT
"""
from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, Sequence

TESTS = Path(__file__).resolve().parents[1]
APPS = TESTS / "apps"   # the applications the tests run; app_env() puts them on PYTHONPATH
# the console scripts live next to the interpreter (.venv/bin); do not resolve symlinks, the
# venv's python is a link to the system one
BIN = Path(sys.executable).parent
WALLAROO = str(BIN / "wallaroo")
WALLAROO_RUN = str(BIN / "wallaroo-run")

# wallaroo-run on stderr once it is ready; ``rest`` is what follows the first " | "
STARTUP_RE = re.compile(r'^wallaroo: running "(?P<app>[^"]*)" \(pid (?P<pid>\d+)\) \| (?P<rest>.*)$')
# one TCP source in the ``rest`` of a startup line
SOURCE_RE = re.compile(r'source "(?P<name>[^"]+)" at tcp://(?P<host>[0-9.]+):(?P<port>\d+)')
# wallaroo receive on stderr once it is ready
LISTENING_RE = re.compile(r"^wallaroo receive: listening on (?P<host>[0-9.]+):(?P<port>\d+)")


def app_env(**extra: str) -> dict[str, str]:
    """This process's environment with tests/apps first on PYTHONPATH, without WR_ARGS_FILE
    (tests/apps/wr_cli_app.py records its args there), and with ``extra`` set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APPS), env.get("PYTHONPATH")]))
    env.pop("WR_ARGS_FILE", None)
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 10) -> subprocess.CompletedProcess[bytes]:
    """Run ``wallaroo-run ARGS`` in ``cwd`` to its end (env: :func:`app_env` unless given);
    stdout and stderr are captured as bytes; ``subprocess.run`` kills it on timeout."""
    return subprocess.run([WALLAROO_RUN, *args], cwd=cwd, env=env or app_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


def _chunks(stream: BinaryIO):
    """The bytes of ``stream`` as they arrive, until EOF (on a pseudo-terminal's master: EIO,
    once the child has closed its side)."""
    try:
        while chunk := stream.read1(65536):
            yield chunk
    except OSError:
        return


class Proc:
    """A running child process whose output is collected in the background.

    stdout is kept as bytes (:attr:`stdout`), stderr as lines without their line ends
    (:attr:`stderr_lines`, or :attr:`stderr` joined by newlines). stdin is /dev/null.
    ``timeout`` is the default deadline, in seconds, of :meth:`wait_stderr` and :meth:`wait`.
    With ``stderr_tty=True`` stderr is a pseudo-terminal instead of a pipe, for output that
    only appears on a terminal (the progress line).

    Usage (the ``processes`` and ``wallaroo_run`` fixtures of tests/conftest.py make the
    Proc and kill it in teardown)::

        proc = Proc([WALLAROO_RUN, "--app", "wr_cli_app:tcp_app",
                     "--in", "frames@127.0.0.1:0", "--out", sink.address],
                    cwd=tmp_path, env=app_env())
        try:
            match, ports = proc.startup()      # waits for the startup line on stderr
            # frame(): support.net
            with socket.create_connection(("127.0.0.1", ports["frames"])) as conn:
                conn.sendall(frame("a") + frame("b"))
            proc.signal(signal.SIGTERM)
            assert proc.wait() == 0, proc.describe()
            assert "not fully delivered" not in proc.stderr
        finally:
            proc.kill()
    """

    def __init__(self, argv: Sequence[str | os.PathLike[str]], *, name: str | None = None,
                 cwd: Path | str | None = None, env: dict[str, str] | None = None,
                 timeout: float = 10.0, stderr_tty: bool = False) -> None:
        self.argv = [os.fspath(arg) for arg in argv]
        self.name = name or Path(self.argv[0]).name
        self.cwd = cwd
        self.timeout = timeout
        self._out = bytearray()
        self._err: list[str] = []
        self._stderr_ended = False
        self._cond = threading.Condition()
        master = slave = None
        if stderr_tty:
            master, slave = pty.openpty()
        try:
            # own session: kill() can reach the process and any worker it spawned
            self.popen = subprocess.Popen(
                self.argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if slave is None else slave, start_new_session=True)
        except BaseException:
            if master is not None:
                os.close(master)
            raise
        finally:
            if slave is not None:
                os.close(slave)  # only the child holds it now: the master reads EOF when it ends
        stderr = self.popen.stderr if master is None else open(master, "rb")
        self._threads = [
            threading.Thread(target=self._pump_stdout, args=(self.popen.stdout,),
                             name=f"{self.name}-stdout", daemon=True),
            threading.Thread(target=self._pump_stderr, args=(stderr,),
                             name=f"{self.name}-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- collecting ---------------------------------------------------------------------------

    def _pump_stdout(self, stream: BinaryIO) -> None:
        with stream:
            for chunk in _chunks(stream):
                with self._cond:
                    self._out += chunk
                    self._cond.notify_all()

    def _pump_stderr(self, stream: BinaryIO) -> None:
        pending = b""
        try:
            with stream:
                for chunk in _chunks(stream):
                    *complete, pending = (pending + chunk).split(b"\n")
                    if complete:
                        self._add_stderr(complete)
            if pending:  # a last line without newline
                self._add_stderr([pending])
        finally:
            with self._cond:
                self._stderr_ended = True
                self._cond.notify_all()

    def _add_stderr(self, lines: list[bytes]) -> None:
        with self._cond:
            self._err += [line.decode("utf-8", "replace").rstrip("\r") for line in lines]
            self._cond.notify_all()

    def _join_readers(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    # -- looking ------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        """The exit code, or None while the process runs."""
        return self.popen.poll()

    @property
    def stdout(self) -> bytes:
        """All of stdout so far."""
        with self._cond:
            return bytes(self._out)

    @property
    def stderr_lines(self) -> list[str]:
        """The stderr lines so far (a last line without newline included)."""
        with self._cond:
            return list(self._err)

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def describe(self) -> str:
        """Command, state, working directory, all of stderr and the end of stdout."""
        code = self.popen.poll()
        state = "running" if code is None else f"exited with {code}"
        return (f"{self.name} (pid {self.pid}, {state}): {' '.join(self.argv)}\n"
                f"cwd: {self.cwd or os.getcwd()}\n--- stderr ---\n{self.stderr}\n"
                f"--- stdout (last 2000 bytes) ---\n{self.stdout[-2000:]!r}\n--------------")

    # -- waiting ------------------------------------------------------------------------------

    def wait_stderr(self, pattern: str | re.Pattern[str], timeout: float | None = None) -> re.Match[str]:
        """The match in the first stderr line, from the start, where ``pattern`` is found
        (``re.search``). Waits for it up to ``timeout`` seconds (default: the Proc's); fails
        with :meth:`describe` if stderr ends or the time runs out first."""
        regex = re.compile(pattern)
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._err[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self._err)
                left = deadline - time.monotonic()
                if self._stderr_ended or left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
        reason = "stderr ended" if self._stderr_ended else f"none came within {timeout:g} s"
        raise AssertionError(f"expected a stderr line of {self.name} matching {regex.pattern!r}, "
                             f"but {reason}\n{self.describe()}")

    def startup(self, timeout: float | None = None) -> tuple[re.Match[str], dict[str, int]]:
        """For ``wallaroo-run``: wait for the startup line; return its :data:`STARTUP_RE`
        match and ``{TCP source name: port}`` read from it."""
        match = self.wait_stderr(STARTUP_RE, timeout)
        ports = {source["name"]: int(source["port"]) for source in SOURCE_RE.finditer(match["rest"])}
        return match, ports

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, once the process has ended and its output is collected; fails with
        :meth:`describe` if it is still running after ``timeout`` seconds (default: the Proc's)."""
        timeout = self.timeout if timeout is None else timeout
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout:g} s\n"
                                 f"{self.describe()}") from None
        self._join_readers(5)
        return code

    # -- stopping -----------------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process itself (not its group) if it still runs."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def kill(self) -> None:
        """Teardown: SIGKILL the whole process group (the process and any worker it spawned,
        even when the process itself has ended), reap it, stop the readers. Idempotent."""
        running = self.popen.poll() is None
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if running:
                self.popen.kill()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._join_readers(2)


def proc_status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...) of a running process."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")
