"""Writing a snapshot without stopping the worker for it.

Pickling a million keys' state takes about a second; the worker must not stand still that long
at every checkpoint. Where the system has ``fork`` (Linux, macOS), the worker forks at the
barrier: the child sees the state exactly as it is at that instant (the kernel copies a page
only when the parent changes it), pickles it, writes and fsyncs the file, reports through a
pipe and exits, while the parent goes on processing at once. Elsewhere the state is pickled on
the event loop and written in a thread.

Example::

    >>> import asyncio, tempfile
    >>> from wallaroo.runtime.checkpoint_store import CheckpointStore
    >>> store = CheckpointStore(tempfile.mkdtemp(), "app", "w0"); store.open()
    >>> async def write_one():
    ...     writing = start_write(store, 1, {"states": {"count": {"a": 1}}})
    ...     return await writing.result()
    >>> asyncio.run(write_one()) > 0, store.read(1)[:2]
    (True, b'\\x80\\x05')
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import signal

from wallaroo.runtime.checkpoint_store import CheckpointStore, ResilienceDirError

#: Whether snapshots are written by a forked child (set False to pickle on the event loop).
FORK = hasattr(os, "fork")


def start_write(store: CheckpointStore, checkpoint_id: int, snapshot: dict):
    """Begin writing ``snapshot`` (a picklable dict, taken as it is now) as checkpoint
    ``checkpoint_id``; something whose ``await result()`` gives the file's size, or raises
    ResilienceDirError (the directory cannot take it) or OSError."""
    if FORK:
        return _ForkedWrite(store, checkpoint_id, snapshot)
    payload = pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
    return _ThreadWrite(asyncio.ensure_future(
        asyncio.to_thread(store.write, checkpoint_id, payload)))


class _ThreadWrite:
    def __init__(self, future):
        self.future = future

    async def result(self) -> int:
        return await self.future


class _ForkedWrite:
    """A child process pickling and writing the snapshot; the parent waits on a pipe."""

    def __init__(self, store: CheckpointStore, checkpoint_id: int, snapshot: dict):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: never returns
            os.close(read_fd)
            _write_and_exit(store, checkpoint_id, snapshot, write_fd)
        os.close(write_fd)
        self.pid = pid
        self.read_fd = read_fd

    async def result(self) -> int:
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        finished = loop.create_future()

        def readable() -> None:
            data = os.read(self.read_fd, 65536)
            if data:
                chunks.append(data)
            elif not finished.done():
                finished.set_result(None)

        loop.add_reader(self.read_fd, readable)
        try:
            await finished
        finally:
            loop.remove_reader(self.read_fd)
            os.close(self.read_fd)
        _, status = os.waitpid(self.pid, 0)
        report = json.loads(b"".join(chunks) or b"{}")
        if "bytes" in report and os.waitstatus_to_exitcode(status) == 0:
            return report["bytes"]
        why = report.get("error") or f"the snapshot writer ended with status {status}"
        if report.get("fatal"):
            raise ResilienceDirError(report.get("errno") or 0, why)
        raise OSError(why)


def _write_and_exit(store: CheckpointStore, checkpoint_id: int, snapshot: dict,
                    report_fd: int) -> None:
    """In the forked child: pickle, write durably, report, exit (no cleanup of the parent's
    loop, files or buffers)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)   # the parent's loop must not see the child's signals
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        gc.disable()               # a collection would touch (and copy) every page
        payload = pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
        report = {"bytes": store.write(checkpoint_id, payload)}
        code = 0
    except ResilienceDirError as exc:
        report = {"error": exc.strerror or str(exc), "fatal": True, "errno": exc.errno}
    except BaseException as exc:   # noqa: BLE001 - everything must reach the parent
        report = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        os.write(report_fd, json.dumps(report).encode())
    finally:
        os._exit(code)
