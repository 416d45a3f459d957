"""Slow work of a checkpoint done by a forked child, so the worker's event loop never waits
for it: pickling and writing a snapshot, copying committed output, fsyncs.

Why a child and not a thread: pickling a million keys' state takes about a second, and a busy
event loop keeps the GIL from a thread for seconds at a time (each turn of the loop releases
and at once takes back the GIL, so a waiting thread never gets it). A forked child sees the
worker's memory exactly as it was at the fork (the kernel copies a page only when the parent
changes it), runs the function, reports its result through a pipe and exits, while the
parent goes on at once. Where ``fork`` does not exist, the work runs in a thread.

Example::

    >>> import asyncio
    >>> async def in_a_child():
    ...     return await start_in_child(sum, [1, 2, 3]).result()
    >>> asyncio.run(in_a_child())
    6
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import pickle
import signal

#: Whether the work runs in a forked child (else in a thread).
FORK = hasattr(os, "fork")
_PR_SET_PDEATHSIG = 1
#: Children started and not yet reaped.
_running: set[int] = set()


def start_in_child(fn, *args):
    """Start ``fn(*args)`` now, in a forked child; something whose ``await result()`` gives
    what ``fn`` returned (picklable), or raises what it raised (an exception that cannot be
    pickled becomes an OSError naming it)."""
    if FORK:
        return _Child(fn, args)
    return _InThread(asyncio.ensure_future(asyncio.to_thread(fn, *args)))


class _InThread:
    def __init__(self, future):
        self.future = future

    async def result(self):
        return await self.future


class _Child:
    """A forked child running one function; the parent reads its report from a pipe."""

    def __init__(self, fn, args):
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:   # the child: never returns
            _leave_only(write_fd)
            _die_with(parent)
            _run_and_exit(fn, args, write_fd)
        os.close(write_fd)
        self.pid = pid
        self.read_fd = read_fd
        _running.add(pid)

    async def result(self):
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        finished = loop.create_future()

        def readable() -> None:
            data = os.read(self.read_fd, 1 << 16)
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
        _running.discard(self.pid)
        try:
            ok, value = pickle.loads(b"".join(chunks))
        except Exception:
            raise OSError(f"the checkpoint's helper process ended without a report "
                          f"(exit status {os.waitstatus_to_exitcode(status)})") from None
        if ok:
            return value
        raise value


def stop_children() -> None:
    """Kill and reap every child still at work (before this process replaces itself: the
    kernel kills them when it dies, not when it execs).

    Example::

        >>> stop_children()
    """
    for pid in list(_running):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        _running.discard(pid)


def _leave_only(report_fd: int) -> None:
    """In the child: close every file the worker had open but the standard streams and the
    report pipe, so that a worker killed meanwhile leaves no socket or file held open."""
    os.closerange(3, report_fd)
    os.closerange(report_fd + 1, os.sysconf("SC_OPEN_MAX"))


def _die_with(parent: int) -> None:
    """In the child: be killed when the worker dies (Linux), and end now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):   # not Linux: the child ends when its work is done
        pass
    if os.getppid() != parent:
        os._exit(1)


def _run_and_exit(fn, args, report_fd: int) -> None:
    """In the forked child: run, report, exit (no cleanup of the parent's loop, files or
    buffers)."""
    try:
        signal.set_wakeup_fd(-1)   # the parent's loop must not see the child's signals
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        gc.disable()               # a collection would touch (and copy) every page
        report = (True, fn(*args))
    except BaseException as exc:   # noqa: BLE001 - everything must reach the parent
        report = (False, exc)
    try:
        try:
            data = pickle.dumps(report)
        except Exception:
            data = pickle.dumps((False, OSError(f"{type(report[1]).__name__}: {report[1]}")))
        data = memoryview(data)
        while data:
            data = data[os.write(report_fd, data):]
    finally:
        os._exit(0)
