"""The resilience directory: one worker's checkpoint files, written so that a crash at any
moment leaves either the whole file or none of it, and a damaged file is found, never loaded.

Layout (``DIR`` is ``--resilience-dir``)::

    DIR/<app>/<worker>/checkpoint-<id>.ckpt   one snapshot per checkpoint (see below)
    DIR/<app>/<worker>/committed              the last checkpoint this worker knows complete

A snapshot file is ``MAGIC | u32 header length | header (JSON) | payload``; the header holds
the checkpoint id, the payload's length and its CRC-32, and its own CRC-32. Files are written
to a temporary name, fsynced, renamed into place, and the directory is fsynced.

Example::

    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp(), "wc", "worker-0")
    >>> store.open()
    >>> store.write(3, b"state")
    72
    >>> store.mark_committed(3); store.committed(), store.read(3)
    (3, b'state')
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zlib

from wallaroo.connectors.files import fsync_dir

log = logging.getLogger("wallaroo")

MAGIC = b"WLRCKPT1"
_LENGTH = struct.Struct(">I")
_NAME = re.compile(r"^checkpoint-(\d+)\.ckpt$")
#: Complete checkpoints a worker keeps: the last, and the one before it (used when the last
#: one's file turns out damaged).
KEEP_COMPLETE = 2


class CheckpointError(Exception):
    """A checkpoint file is missing, truncated or damaged; the message names the file."""


class ResilienceDirError(OSError):
    """The resilience directory cannot be written (missing, read-only, full); the message
    names it and says what to do."""


class CheckpointStore:
    """One worker's checkpoint files under ``DIR/<app>/<worker>``.

    Example::

        >>> import tempfile
        >>> store = CheckpointStore(tempfile.mkdtemp(), "app", "w1")
        >>> store.open()
        >>> for n in (1, 2, 3): _ = store.write(n, b"x" * n)
        >>> store.mark_committed(3); store.prune(); store.ids()
        [2, 3]
    """

    def __init__(self, root: str, app: str, worker: str):
        self.root = root
        self.path = os.path.join(root, _safe(app), _safe(worker))

    # -- set-up ---------------------------------------------------------------------------

    def open(self) -> None:
        """Make this worker's directory and prove it can be written; ResilienceDirError
        otherwise."""
        if not os.path.isdir(self.root):
            raise ResilienceDirError(
                f"--resilience-dir {self.root!r} does not exist: create it (it must be on a "
                f"disk that survives a restart) or point the flag at an existing directory")
        try:
            os.makedirs(self.path, exist_ok=True)
            _write_durably(os.path.join(self.path, ".probe"), b"ok")
            os.unlink(os.path.join(self.path, ".probe"))
        except OSError as exc:
            raise _dir_error(self.path, exc) from None

    def clear(self) -> None:
        """Remove every file of this worker (the run ended cleanly: nothing to recover)."""
        shutil.rmtree(self.path, ignore_errors=True)

    # -- snapshots ------------------------------------------------------------------------

    def file_of(self, checkpoint_id: int) -> str:
        """The path of checkpoint ``checkpoint_id``'s snapshot."""
        return os.path.join(self.path, f"checkpoint-{checkpoint_id:012d}.ckpt")

    def write(self, checkpoint_id: int, payload: bytes) -> int:
        """Write the snapshot durably; its size in bytes. ResilienceDirError if the directory
        cannot take it (the message says why and what to do)."""
        header = json.dumps({"checkpoint": checkpoint_id, "length": len(payload),
                             "crc32": zlib.crc32(payload)}).encode()
        head = MAGIC + _LENGTH.pack(len(header)) + header + _LENGTH.pack(zlib.crc32(header))
        try:
            _write_durably(self.file_of(checkpoint_id), head, payload)
        except OSError as exc:
            raise _dir_error(self.path, exc) from None
        return len(head) + len(payload)

    def read(self, checkpoint_id: int) -> bytes:
        """The payload of checkpoint ``checkpoint_id``; CheckpointError if its file is missing,
        truncated or damaged.

        Example::

            >>> import tempfile
            >>> store = CheckpointStore(tempfile.mkdtemp(), "app", "w0")
            >>> store.open()
            >>> _ = store.write(1, b"abc")
            >>> with open(store.file_of(1), "r+b") as f: _ = f.seek(-1, 2); _ = f.write(b"X")
            >>> store.read(1)
            Traceback (most recent call last):
            ...
            wallaroo.runtime.checkpoint_store.CheckpointError: ...checkpoint-000000000001.ckpt is damaged: its data does not match its checksum
        """
        path = self.file_of(checkpoint_id)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
        if not data.startswith(MAGIC):
            raise CheckpointError(f"{path} is damaged: it does not start like a checkpoint")
        try:
            (size,) = _LENGTH.unpack_from(data, len(MAGIC))
            start = len(MAGIC) + _LENGTH.size
            header_bytes = data[start:start + size]
            (header_crc,) = _LENGTH.unpack_from(data, start + size)
        except struct.error:
            raise CheckpointError(f"{path} is truncated: its header is cut short") from None
        if zlib.crc32(header_bytes) != header_crc:
            raise CheckpointError(f"{path} is damaged: its header does not match its checksum")
        header = json.loads(header_bytes)
        payload = data[start + size + _LENGTH.size:]
        if header.get("checkpoint") != checkpoint_id:
            raise CheckpointError(f"{path} holds checkpoint {header.get('checkpoint')}, "
                                  f"not {checkpoint_id}")
        if len(payload) != header["length"]:
            raise CheckpointError(f"{path} is truncated: {len(payload)} of "
                                  f"{header['length']} bytes")
        if zlib.crc32(payload) != header["crc32"]:
            raise CheckpointError(f"{path} is damaged: its data does not match its checksum")
        return payload

    def ids(self) -> list[int]:
        """The checkpoints that have a snapshot file here, oldest first."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)

    def discard_after(self, checkpoint_id: int) -> None:
        """Remove the snapshots of checkpoints after ``checkpoint_id`` (they never completed)."""
        for n in self.ids():
            if n > checkpoint_id:
                _unlink(self.file_of(n))

    def prune(self) -> None:
        """Keep the last ``KEEP_COMPLETE`` complete checkpoints and any later one."""
        committed = self.committed()
        if committed is None:
            return
        complete = [n for n in self.ids() if n <= committed]
        for n in complete[:-KEEP_COMPLETE]:
            _unlink(self.file_of(n))

    # -- which checkpoint is complete -----------------------------------------------------

    def mark_committed(self, checkpoint_id: int) -> None:
        """Record durably that checkpoint ``checkpoint_id`` is complete."""
        body = json.dumps({"checkpoint": checkpoint_id}).encode()
        try:
            _write_durably(os.path.join(self.path, "committed"),
                           _LENGTH.pack(zlib.crc32(body)) + body)
        except OSError as exc:
            raise _dir_error(self.path, exc) from None

    def has_committed_record(self) -> bool:
        """Whether a record of a complete checkpoint exists (damaged or not)."""
        return os.path.exists(os.path.join(self.path, "committed"))

    def committed(self) -> int | None:
        """The last checkpoint this worker knows complete, or None (none yet, or its record is
        damaged: see ``has_committed_record``; the coordinator then lets the snapshots every
        worker holds decide, see wallaroo.cluster.rounds.choose_restore)."""
        try:
            with open(os.path.join(self.path, "committed"), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        if len(data) < _LENGTH.size or _LENGTH.unpack_from(data)[0] != zlib.crc32(data[4:]):
            log.warning("%s: the record of the last complete checkpoint is damaged; ignoring it",
                        self.path)
            return None
        return json.loads(data[4:])["checkpoint"]


def _write_durably(path: str, *parts: bytes) -> None:
    """Write ``parts`` to ``path`` so that a crash leaves the old file or the whole new one."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _safe(name: str) -> str:
    """A file name made of ``name`` (an app or worker name)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def _dir_error(path: str, exc: OSError) -> ResilienceDirError:
    reason = exc.strerror or str(exc)
    return ResilienceDirError(
        exc.errno, f"cannot write checkpoints to {path}: {reason}; free space or fix the "
                   f"permissions of --resilience-dir, then restart with the same command line "
                   f"(the last complete checkpoint is kept)")
