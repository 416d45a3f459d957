"""A small headless-Chromium driver for tests, stdlib only, over the DevTools protocol.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol commands from its fd 3
and writes responses and events to its fd 4, each message a JSON object followed by a NUL
byte. :class:`Browser` opens one page (a target attached in "flatten" mode, so every command
for the page carries its ``sessionId``), records what went wrong on it (console errors,
uncaught exceptions, error log entries, failed requests), and offers navigate / evaluate /
screenshot. Every wait has a deadline, so a hung browser fails a test instead of hanging it.

Usage::

    path = ensure_chromium()
    if path is None:
        pytest.skip("chromium is not installed and cannot be installed here")
    with Browser(path) as browser:
        browser.navigate("http://127.0.0.1:8000/")
        title = browser.evaluate("document.title")
        png = browser.screenshot()
        assert not browser.problems(), browser.problems()
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# the flags every test browser gets; the pipe, profile and window flags are added by Browser
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--disable-component-update", "--disable-sync"]
WINDOW = (1400, 1000)
COMMAND_TIMEOUT = 15.0     # seconds for any one protocol command to be answered
INSTALL_TIMEOUT = 600.0    # seconds for apt-get to install chromium


class BrowserError(AssertionError):
    """The browser failed, died, or did not answer in time (an AssertionError, so a test
    reports it as a failure with the message, which ends with the browser's stderr)."""


def ensure_chromium() -> str | None:
    """The path of Chromium (/usr/bin/chromium, else ``chromium`` on PATH). If it is missing
    and this process runs as root, Debian's ``chromium`` package is installed first. None if it
    cannot be had."""
    found = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True,
                       env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       timeout=INSTALL_TIMEOUT, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else None


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered 10 or above (``fd`` is closed), so that
    moving it to fd 3 or 4 in the child cannot overwrite the other pipe end."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """A headless Chromium with one open page, as a context manager.

    After ``__enter__`` the page is ``about:blank`` with the Runtime, Log, Page and Network
    domains enabled. What went wrong on it is collected in :attr:`console_errors`,
    :attr:`exceptions`, :attr:`log_errors` and :attr:`failed_requests` (lists of strings);
    :meth:`problems` is all of them. On exit the browser and all its processes are killed
    and its temporary profile is removed.
    """

    def __init__(self, path: str = CHROMIUM, *, window: tuple[int, int] = WINDOW,
                 timeout: float = COMMAND_TIMEOUT) -> None:
        self.path = path
        self.window = window
        self.timeout = timeout
        self.pid: int | None = None
        self.session_id: str | None = None
        self.console_errors: list[str] = []
        self.exceptions: list[str] = []
        self.log_errors: list[str] = []
        self.failed_requests: list[str] = []
        self._profile: str | None = None
        self._to_browser = self._from_browser = -1
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        self._events: list[dict] = []
        self._urls: dict[str, str] = {}        # network requestId -> URL
        self._closed = False                   # the browser's output pipe has ended
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._write_lock = threading.Lock()

    # -- starting and stopping ------------------------------------------------------------------

    def __enter__(self) -> "Browser":
        try:
            self._spawn()
            target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
            attached = self.call("Target.attachToTarget",
                                 {"targetId": target["targetId"], "flatten": True}, session=False)
            self.session_id = attached["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _spawn(self) -> None:
        """Start Chromium with its fd 3 and 4 on two pipes, stdout to /dev/null and stderr to
        a file in the profile folder; it leads its own session (so all its processes can be
        killed together). posix_spawn is used because fd numbers cannot be chosen with
        subprocess, and a preexec_fn is not safe while other threads run."""
        self._profile = tempfile.mkdtemp(prefix="wallaroo-chromium-")
        cmd_read, cmd_write = os.pipe()        # we write commands, the browser reads on fd 3
        out_read, out_write = os.pipe()        # the browser writes on fd 4, we read
        cmd_read, out_write = _high_fd(cmd_read), _high_fd(out_write)
        argv = [self.path, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
                f"--window-size={self.window[0]},{self.window[1]}"]
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, self.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
            (os.POSIX_SPAWN_DUP2, cmd_read, 3),
            (os.POSIX_SPAWN_DUP2, out_write, 4),
        ]
        try:
            self.pid = os.posix_spawn(self.path, argv, os.environ, file_actions=actions,
                                      setsid=True)
        finally:
            os.close(cmd_read)
            os.close(out_write)
        self._to_browser, self._from_browser = cmd_write, out_read
        os.set_blocking(self._to_browser, False)
        self._reader = threading.Thread(target=self._read_loop, name="chromium-reader", daemon=True)
        self._reader.start()

    @property
    def stderr_path(self) -> str:
        return os.path.join(self._profile or tempfile.gettempdir(), "chromium.stderr")

    def stderr_tail(self, size: int = 3000) -> str:
        """The end of what Chromium wrote on stderr (for failure messages)."""
        try:
            return Path(self.stderr_path).read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Ask the browser to close, then kill its process group, reap it, close the pipes
        and remove the profile. Idempotent."""
        if self.pid is not None:
            if not self._closed:
                try:
                    self.call("Browser.close", session=False, timeout=3)
                except BrowserError:
                    pass
            if not self._wait_exit(3.0):
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self._wait_exit(5.0)
            # the renderer and helper processes are in the same group: kill what is left
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.pid = None
        if self._reader is not None:
            self._reader.join(2)    # ends on EOF once every browser process is gone
        for fd in (self._to_browser, self._from_browser):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._to_browser = self._from_browser = -1
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    def _wait_exit(self, timeout: float) -> bool:
        """Reap the browser process; whether it ended within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # -- the protocol ---------------------------------------------------------------------------

    def _read_loop(self) -> None:
        """Split the browser's output on NUL bytes; file responses by id, handle events."""
        pending = b""
        try:
            while chunk := os.read(self._from_browser, 1 << 16):
                *messages, pending = (pending + chunk).split(b"\0")
                for raw in messages:
                    self._dispatch(json.loads(raw))
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _dispatch(self, message: dict) -> None:
        with self._cond:
            if "id" in message:
                self._responses[message["id"]] = message
            else:
                self._record(message.get("method", ""), message.get("params", {}))
                self._events.append(message)
            self._cond.notify_all()

    def _record(self, method: str, params: dict) -> None:
        """Keep what counts as a problem on the page (called with the lock held)."""
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.console_errors.append(" ".join(_remote_text(arg) for arg in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            self.exceptions.append(exception.get("description") or details.get("text", "?"))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.log_errors.append(f"{entry.get('text', '')} ({entry.get('url', '')})")
        elif method == "Network.requestWillBeSent":
            self._urls[params.get("requestId", "")] = params.get("request", {}).get("url", "")
        elif method == "Network.responseReceived":
            response = params.get("response", {})
            if response.get("status", 0) >= 400:
                self.failed_requests.append(f"{response.get('url')}: HTTP {response.get('status')}")
        elif method == "Network.loadingFailed":
            url = self._urls.get(params.get("requestId", ""), "?")
            self.failed_requests.append(f"{url}: {params.get('errorText', 'failed')}")

    def _send(self, data: bytes, deadline: float) -> None:
        """Write all of ``data`` to the browser's fd 3 (non-blocking, up to ``deadline``)."""
        with self._write_lock:
            view = memoryview(data)
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._error("the browser stopped reading commands")
                _, writable, _ = select.select([], [self._to_browser], [], left)
                if writable:
                    try:
                        view = view[os.write(self._to_browser, view):]
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        raise self._error(f"cannot write to the browser: {exc}") from None

    def call(self, method: str, params: dict | None = None, *, session: bool = True,
             timeout: float | None = None) -> dict:
        """Send one command (to the page's session unless ``session=False``) and return its
        result; a protocol error, the browser's death or ``timeout`` raise BrowserError."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._closed:
                raise self._error(f"{method}: the browser is gone")
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session_id
        self._send(json.dumps(message).encode() + b"\0", deadline)
        with self._cond:
            while ident not in self._responses:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    reason = "the browser is gone" if self._closed else f"no answer in {timeout:g} s"
                    raise self._error(f"{method}: {reason}")
                self._cond.wait(min(left, 0.2))
            response = self._responses.pop(ident)
        if "error" in response:
            raise self._error(f"{method} failed: {response['error']}")
        return response.get("result", {})

    def wait_event(self, method: str, timeout: float | None = None, since: int = 0) -> dict:
        """The params of the first event ``method`` of the page received at or after position
        ``since`` (see :meth:`event_count`); waits up to ``timeout`` seconds."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events[since:]:
                    if event.get("method") == method:
                        return event.get("params", {})
                since = len(self._events)
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise self._error(f"no {method} event within {timeout:g} s")
                self._cond.wait(min(left, 0.2))

    def event_count(self) -> int:
        """How many events have arrived so far (a position for :meth:`wait_event`)."""
        with self._cond:
            return len(self._events)

    def _error(self, what: str) -> BrowserError:
        return BrowserError(f"chromium: {what}\n--- chromium stderr (end) ---\n{self.stderr_tail()}")

    # -- what a test does -----------------------------------------------------------------------

    def navigate(self, url: str, timeout: float | None = None) -> None:
        """Load ``url`` and wait for its load event."""
        since = self.event_count()
        result = self.call("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise self._error(f"cannot load {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired", timeout=timeout, since=since)

    def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        """The value of a JS expression in the page (promises are awaited; the value comes
        back as JSON); an exception in it raises BrowserError."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise self._error(f"evaluating {expression[:200]!r} threw: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 20.0, interval: float = 0.25) -> Any:
        """Evaluate ``expression`` until its value is truthy (returned); BrowserError after
        ``timeout`` seconds, with the last value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise self._error(f"{expression[:200]!r} still {value!r} after {timeout:g} s")
            time.sleep(interval)

    def screenshot(self, full_page: bool = True) -> bytes:
        """A PNG of the page: all of it (``full_page``) or the window's viewport."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                              "scale": 1}
            params["captureBeyondViewport"] = True
        return base64.b64decode(self.call("Page.captureScreenshot", params)["data"])

    def problems(self) -> list[str]:
        """Everything that went wrong on the page so far, each line prefixed by its kind."""
        with self._cond:
            return ([f"console error: {text}" for text in self.console_errors]
                    + [f"exception: {text}" for text in self.exceptions]
                    + [f"log error: {text}" for text in self.log_errors]
                    + [f"failed request: {text}" for text in self.failed_requests])


def _remote_text(obj: dict) -> str:
    """A console argument (a Runtime.RemoteObject) as text."""
    if "value" in obj:
        return str(obj["value"])
    return obj.get("description") or obj.get("type", "?")
