"""Unit and integration tests of the checkpoint machinery (docs/resilience.md; architecture.md,
"Checkpoints and recovery"): the checkpoint store, the choice of the checkpoint to restore,
barrier alignment, forked snapshot helpers, replayable sources, the two-phase file sink,
whole-worker snapshots and restores, and input held at a barrier.

Everything runs in this process (plus real forked children): real files with fsync, real
forks, no subprocesses of wallaroo-run.
"""
from __future__ import annotations

import asyncio
import errno
import os
import pickle
import random
import struct
import sys
from collections import deque
from types import SimpleNamespace

import pytest

import wallaroo
from support.processes import APPS
from wallaroo._core.chain import WATERMARK_END_OF_INPUT, Batch, StateOp
from wallaroo._core.windows import CountWindowOp, RangeWindowOp, SessionWindowOp
from wallaroo.api.configs import SinkConfig
from wallaroo.cluster.barriers import BarrierAlignment, decode_marker, encode_marker
from wallaroo.cluster.rounds import NoCheckpoint, choose_restore
from wallaroo.connectors.files import FEED_SIZE, FileSink, FileSource
from wallaroo.connectors.forked import start_in_child
from wallaroo.connectors.generated import GenSource, IterSource
from wallaroo.runtime.checkpoint_store import (
    MAGIC, CheckpointError, CheckpointStore, ResilienceDirError,
)
from wallaroo.runtime.checkpointing import Checkpointer
from wallaroo.runtime.flow import FlowControl
from wallaroo.runtime.worker import RunOptions, Worker

if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))
import wr_checkpoint_units_app as units_app  # noqa: E402

pytestmark = pytest.mark.timeout(10)


def run(coro, timeout=5.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# =============================================================================================
# 1. CheckpointStore


@pytest.fixture
def store(tmp_path):
    s = CheckpointStore(str(tmp_path), "my app", "worker/0")
    s.open()
    return s


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def header_end(path):
    """Offset of the first payload byte of a snapshot file."""
    with open(path, "rb") as f:
        data = f.read()
    (size,) = struct.unpack_from(">I", data, len(MAGIC))
    return len(MAGIC) + 4 + size + 4


def test_store_round_trip_is_durable_and_tidy(store, tmp_path):
    payload = pickle.dumps({"states": {"k": list(range(100))}})
    size = store.write(7, payload)
    path = store.file_of(7)
    assert os.path.getsize(path) == size
    assert store.read(7) == payload
    # names are made safe, and live under DIR/<app>/<worker>
    assert os.path.dirname(path) == os.path.join(str(tmp_path), "my_app", "worker_0")
    assert os.path.basename(path) == "checkpoint-000000000007.ckpt"
    with open(path, "rb") as f:
        assert f.read(len(MAGIC)) == MAGIC == b"WLRCKPT1"
    # no temporary file is left, the probe of open() is gone, only owner may read
    assert sorted(os.listdir(store.path)) == ["checkpoint-000000000007.ckpt"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    # an empty payload is a valid snapshot too; rewriting an id replaces it whole
    store.write(8, b"")
    assert store.read(8) == b""
    store.write(8, b"second")
    assert store.read(8) == b"second"


@pytest.mark.parametrize("damage, why", [
    ("truncate_payload", "is truncated"),
    ("truncate_header", "is truncated"),
    ("flip_payload", "does not match its checksum"),
    ("flip_header", "header does not match its checksum"),
    ("flip_header_crc", "header does not match its checksum"),
    ("wrong_magic", "does not start like a checkpoint"),
    ("empty", "does not start like a checkpoint"),
    ("other_id", "holds checkpoint 2, not 3"),
    ("missing", "cannot be read"),
])
def test_store_damaged_file_raises_naming_it(store, damage, why):
    payload = bytes(range(256)) * 4
    store.write(2, b"the other checkpoint")
    store.write(3, payload)
    path = store.file_of(3)
    start = header_end(path)
    if damage == "truncate_payload":
        os.truncate(path, start + len(payload) // 2)
    elif damage == "truncate_header":
        os.truncate(path, len(MAGIC) + 4 + 5)
    elif damage == "flip_payload":
        flip_byte(path, start + 100)
    elif damage == "flip_header":
        flip_byte(path, len(MAGIC) + 4 + 3)
    elif damage == "flip_header_crc":
        flip_byte(path, start - 1)
    elif damage == "wrong_magic":
        flip_byte(path, 0)
    elif damage == "empty":
        os.truncate(path, 0)
    elif damage == "other_id":
        os.replace(store.file_of(2), path)
    elif damage == "missing":
        os.unlink(path)
    with pytest.raises(CheckpointError) as info:
        store.read(3)
    assert path in str(info.value)
    assert why in str(info.value)


def test_store_committed_record(store):
    assert store.committed() is None
    store.mark_committed(4)
    assert store.committed() == 4
    store.mark_committed(12)
    assert store.committed() == 12
    committed = os.path.join(store.path, "committed")
    flip_byte(committed, os.path.getsize(committed) - 3)
    assert store.committed() is None
    os.truncate(committed, 2)
    assert store.committed() is None
    store.mark_committed(5)
    assert store.committed() == 5


def test_store_prune_keeps_last_two_complete_and_later(store):
    for n in range(1, 7):
        store.write(n, b"x" * n)
    store.prune()                      # nothing committed: nothing to prune
    assert store.ids() == [1, 2, 3, 4, 5, 6]
    store.mark_committed(4)
    store.prune()
    assert store.ids() == [3, 4, 5, 6]
    store.mark_committed(6)
    store.prune()
    assert store.ids() == [5, 6]
    assert store.read(5) == b"xxxxx" and store.read(6) == b"xxxxxx"


def test_store_discard_after(store):
    for n in (2, 3, 5, 9):
        store.write(n, b"s")
    store.discard_after(3)
    assert store.ids() == [2, 3]
    store.discard_after(-1)
    assert store.ids() == []


def test_store_ids_ignore_foreign_files_and_tmp_leftovers(store):
    store.write(10, b"a")
    store.write(2, b"b")
    store.mark_committed(10)
    for name in ("checkpoint-000000000011.ckpt.tmp", "checkpoint-abc.ckpt", "notes.txt",
                 "checkpoint-12.ckpt~", "committed.tmp", ".probe"):
        with open(os.path.join(store.path, name), "wb") as f:
            f.write(b"junk")
    os.mkdir(os.path.join(store.path, "subdir"))
    assert store.ids() == [2, 10]
    store.prune()
    assert os.path.exists(os.path.join(store.path, "notes.txt"))


def test_store_open_on_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ResilienceDirError) as info:
        CheckpointStore(str(missing), "app", "w0").open()
    assert "--resilience-dir" in str(info.value)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, OSError)
    assert not missing.exists()
    # a store never opened has no checkpoints
    assert CheckpointStore(str(missing), "app", "w0").ids() == []


def test_store_write_to_a_broken_directory_raises_resilience_dir_error(store):
    # the worker's directory replaced by a file: any write fails (even as root)
    os.rmdir(store.path)
    with open(store.path, "wb") as f:
        f.write(b"not a directory")
    with pytest.raises(ResilienceDirError) as info:
        store.write(1, b"x")
    assert info.value.errno == errno.ENOTDIR
    assert store.path in str(info.value) and "--resilience-dir" in str(info.value)
    with pytest.raises(ResilienceDirError):
        store.mark_committed(1)


# =============================================================================================
# 2. choose_restore (over real surveys of real stores)


def survey_of(tmp_path, worker, files, committed=None, damaged=()):
    s = CheckpointStore(str(tmp_path), "app", worker)
    s.open()
    for n in files:
        s.write(n, pickle.dumps(n))
    for n in damaged:
        flip_byte(s.file_of(n), header_end(s.file_of(n)))
    if committed is not None:
        s.mark_committed(committed)
    return worker, Checkpointer(None, s).survey()


def test_choose_restore_fresh_start(tmp_path):
    assert choose_restore([]) == (None, 1)
    surveys = [survey_of(tmp_path, "w0", []), survey_of(tmp_path, "w1", [])]
    assert choose_restore(surveys) == (None, 1)
    # snapshots were written, none completed: start afresh, with an id above them
    surveys = [survey_of(tmp_path, "w2", [1, 2]), survey_of(tmp_path, "w3", [1])]
    assert choose_restore(surveys) == (None, 3)


def test_choose_restore_takes_max_committed_among_workers(tmp_path):
    # w1 did not get "commit 3" before the crash; w0's record proves 3 complete
    surveys = [survey_of(tmp_path, "w0", [2, 3], committed=3),
               survey_of(tmp_path, "w1", [2, 3], committed=2),
               survey_of(tmp_path, "w2", [1, 2, 3], committed=None)]
    assert choose_restore(surveys) == (3, 4)


def test_choose_restore_damaged_newest_goes_back(tmp_path, caplog):
    surveys = [survey_of(tmp_path, "w0", [6, 7], committed=7),
               survey_of(tmp_path, "w1", [6, 7], committed=7, damaged=[7])]
    assert surveys[1][1]["readable"] == [6] and 7 in surveys[1][1]["damaged"]
    with caplog.at_level("WARNING", logger="wallaroo"):
        assert choose_restore(surveys) == (6, 8)
    assert "checkpoint 7" in caplog.text


def test_choose_restore_nothing_readable(tmp_path):
    surveys = [survey_of(tmp_path, "w0", [4, 5], committed=5),
               survey_of(tmp_path, "w1", [4, 5], committed=5, damaged=[4, 5])]
    with pytest.raises(NoCheckpoint) as info:
        choose_restore(surveys)
    assert "--resilience-dir" in str(info.value)
    # a snapshot only one worker can read is not enough either
    surveys = [survey_of(tmp_path, "w2", [5], committed=5, damaged=[5]),
               survey_of(tmp_path, "w3", [4], committed=4)]
    with pytest.raises(NoCheckpoint):
        choose_restore(surveys)


def test_choose_restore_never_picks_an_uncommitted_checkpoint(tmp_path):
    # 9 is readable everywhere but was never committed: 8 is restored; ids go on above 9 and
    # above the damaged 11 and the uncommitted 10
    surveys = [survey_of(tmp_path, "w0", [7, 8, 9, 10], committed=8),
               survey_of(tmp_path, "w1", [7, 8, 9, 11], committed=8, damaged=[11])]
    assert choose_restore(surveys) == (8, 12)


def test_choose_restore_next_id_above_a_damaged_committed_record(tmp_path):
    # a committed record that is only a number (its snapshots were pruned) still counts
    surveys = [("w0", {"committed": 20, "readable": [19, 20], "damaged": {21: "x"},
                       "highest": 21}),
               ("w1", {"committed": 19, "readable": [19, 20], "damaged": {},
                       "highest": 30})]
    assert choose_restore(surveys) == (20, 31)


def test_choose_restore_with_every_committed_record_damaged_does_not_start_afresh(tmp_path):
    """One worker; its ``committed`` record is damaged but its snapshots are fine.

    docs/resilience.md: a damaged file is never loaded, and "if no complete checkpoint can be
    read, the run stops and says so"; CheckpointStore.committed() says that then "the
    snapshots decide". Starting afresh instead would discard the snapshots (restore(None)
    deletes them) and write the committed output of the file sink a second time."""
    name, survey = survey_of(tmp_path, "w0", [3, 4], committed=4)
    committed = os.path.join(tmp_path, "app", "w0", "committed")
    flip_byte(committed, os.path.getsize(committed) - 2)
    name, survey = name, Checkpointer(None, CheckpointStore(str(tmp_path), "app", "w0")).survey()
    assert survey["committed"] is None and survey["readable"] == [3, 4]
    try:
        restore, next_id = choose_restore([(name, survey)])
    except NoCheckpoint:
        return   # stopping and saying so is acceptable
    assert restore is not None, (
        "a damaged 'committed' record on every worker makes choose_restore start afresh "
        "although complete, readable snapshots exist")
    assert next_id == 5


# =============================================================================================
# 3. BarrierAlignment: three workers, two levels, in-memory FIFO links


class Cluster:
    """``n`` alignments wired through FIFO links; checks every rule as markers move."""

    def __init__(self, n, levels, rng):
        self.n, self.levels, self.rng = n, levels, rng
        self.links = {(s, r): deque() for s in range(n) for r in range(n) if s != r}
        self.aligned = {w: [] for w in range(n)}
        self.sent = {w: [] for w in range(n)}
        self.aligns = [BarrierAlignment(w, n, levels, self._sender(w), self._on_aligned(w))
                       for w in range(n)]
        self.checkpoint = None

    def peers(self, w):
        return {p for p in range(self.n) if p != w}

    def _sender(self, w):
        def send(peer, record):
            cid, level = decode_marker(record)
            assert peer != w and cid == self.checkpoint
            assert self.begun[w], "a marker went out before the worker's own barrier"
            if level > 1:   # level k only once every level k-1 marker has arrived
                assert self.received[w][level - 1] == self.peers(w), (w, level, self.received[w])
            self.sent[w].append((cid, peer, level))
            self.links[(w, peer)].append(record)
        return send

    def _on_aligned(self, w):
        def aligned():
            for level in range(1, self.levels + 1):
                assert self.received[w][level] == self.peers(w), (w, level)
            assert self.begun[w]
            self.aligned[w].append(self.checkpoint)
        return aligned

    def checkpoint_round(self, cid):
        """One barrier, in a random interleaving of begins, deliveries and finishes."""
        self.checkpoint = cid
        self.begun = {w: False for w in range(self.n)}
        self.received = {w: {lv: set() for lv in range(1, self.levels + 1)}
                         for w in range(self.n)}
        self.finished = set()
        early = 0
        while True:
            actions = [("begin", w) for w in range(self.n) if not self.begun[w]]
            actions += [("deliver", link) for link, queue in self.links.items() if queue]
            actions += [("finish", w) for w in range(self.n)
                        if self.aligned[w][-1:] == [cid] and w not in self.finished]
            if not actions:
                break
            kind, what = self.rng.choice(actions)
            if kind == "begin":
                self.begun[what] = True
                self.aligns[what].begin(cid)
            elif kind == "finish":
                self.finished.add(what)
                self.aligns[what].finish()
            else:
                sender, receiver = what
                assert receiver not in self.finished, "a marker reached a worker that finished"
                got = decode_marker(self.links[what].popleft())
                assert got[0] == cid
                if not self.begun[receiver]:
                    early += 1
                self.received[receiver][got[1]].add(sender)
                self.aligns[receiver].on_marker(sender, *got)
            self.check_holds()
        for w in range(self.n):
            assert self.aligned[w].count(cid) == 1
            assert sorted((p, lv) for c, p, lv in self.sent[w] if c == cid) == sorted(
                (p, lv) for p in self.peers(w) for lv in range(1, self.levels + 1))
        return early

    def check_holds(self):
        for w in range(self.n):
            for p in self.peers(w):
                expect = (w not in self.finished and self.levels > 0
                          and p in self.received[w][self.levels])
                assert self.aligns[w].holds(p) == expect, (w, p)


@pytest.mark.parametrize("seed", range(40))
def test_barrier_alignment_three_workers_two_levels(seed):
    cluster = Cluster(3, 2, random.Random(seed))
    cluster.checkpoint_round(1)
    cluster.checkpoint_round(2)
    assert all(a == [1, 2] for a in cluster.aligned.values())
    assert all(not q for q in cluster.links.values())
    if seed == 0:
        # the random interleavings do deliver markers before the receiver's own barrier
        total = sum(Cluster(3, 2, random.Random(s)).checkpoint_round(1) for s in range(40))
        assert total > 0


def test_barrier_markers_before_begin_are_kept():
    sent, aligned = [], []
    align = BarrierAlignment(0, 3, 2, lambda peer, rec: sent.append((peer, decode_marker(rec))),
                             lambda: aligned.append(True))
    align.on_marker(1, 9, 1)
    align.on_marker(2, 9, 1)
    assert sent == [] and aligned == []          # nothing goes out before its own barrier
    align.on_marker(1, 9, 2)                      # even a last-level marker, early
    assert align.holds(1) and not align.holds(2)
    align.begin(9)
    # every level-1 marker was in: both levels go out at once
    assert sent == [(1, (9, 1)), (2, (9, 1)), (1, (9, 2)), (2, (9, 2))]
    assert aligned == []
    align.on_marker(2, 9, 2)
    assert aligned == [True] and align.holds(1) and align.holds(2)
    align.finish()
    assert not align.holds(1) and not align.holds(2)


def test_barrier_level_two_waits_for_every_level_one():
    sent, aligned = [], []
    align = BarrierAlignment(1, 3, 2, lambda peer, rec: sent.append((peer, decode_marker(rec))),
                             lambda: aligned.append(True))
    align.begin(4)
    assert sent == [(0, (4, 1)), (2, (4, 1))]
    align.on_marker(0, 4, 1)
    assert len(sent) == 2
    align.on_marker(2, 4, 1)
    assert sent[2:] == [(0, (4, 2)), (2, (4, 2))]
    align.on_marker(0, 4, 2)
    assert aligned == [] and align.holds(0) and not align.holds(2)
    align.on_marker(2, 4, 2)
    assert aligned == [True]


def test_barrier_depth_zero_aligns_at_once():
    aligned = []
    align = BarrierAlignment(2, 3, 0, lambda *a: pytest.fail("no marker with depth 0"),
                             lambda: aligned.append(True))
    align.begin(1)
    assert aligned == [True]
    assert not align.holds(0) and not align.holds(1)
    align.finish()
    align.begin(2)
    assert aligned == [True, True]


def test_marker_encoding():
    record = encode_marker(2 ** 40 + 3, 7)
    assert decode_marker(record) == (2 ** 40 + 3, 7)
    assert decode_marker(record[:-1]) is None
    assert decode_marker(b"\x00\x00\x00\x00" + record[4:]) is None


# =============================================================================================
# 4. start_in_child (forked)


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no")


def _raise(exc):
    raise exc


def test_start_in_child_returns_the_value():
    async def main():
        child = start_in_child(lambda n: (os.getpid(), sum(range(n))), 1000)
        return child, await child.result()
    child, (pid, total) = run(main())
    assert total == 499500
    assert pid == child.pid != os.getpid()


def test_start_in_child_reraises_with_class_and_errno():
    async def main(exc):
        return await start_in_child(_raise, exc).result()
    with pytest.raises(ResilienceDirError) as info:
        run(main(ResilienceDirError(errno.ENOSPC, "cannot write checkpoints to /x: full")))
    assert info.value.errno == errno.ENOSPC
    assert "cannot write checkpoints to /x" in str(info.value)
    with pytest.raises(CheckpointError, match="damaged"):
        run(main(CheckpointError("f is damaged")))
    with pytest.raises(KeyError):
        run(main(KeyError("k")))
    # an exception that cannot cross the pipe becomes an OSError naming it
    with pytest.raises(OSError, match="Unpicklable: gone"):
        run(main(Unpicklable("gone")))


def test_start_in_child_that_dies_without_report():
    async def main():
        return await start_in_child(os._exit, 3).result()
    with pytest.raises(OSError, match="without a report"):
        run(main())


def test_start_in_child_sees_memory_as_at_the_fork(tmp_path):
    state = {f"k{i}": [i] for i in range(20000)}
    out = tmp_path / "snapshot"

    def snapshot():
        # slow enough that the parent's changes happen while the child pickles
        data = pickle.dumps(state)
        out.write_bytes(data)
        return len(state), sum(v[0] for v in state.values())

    async def main():
        child = start_in_child(snapshot)
        for i in range(20000):          # the parent goes on at once
            state[f"k{i}"][0] = -1
        state["new"] = [10 ** 9]
        return await child.result()

    keys, total = run(main())
    assert (keys, total) == (20000, sum(range(20000)))
    assert pickle.loads(out.read_bytes()) == {f"k{i}": [i] for i in range(20000)}
    assert state["k5"] == [-1] and "new" in state


# =============================================================================================
# 5, 6. Replayable sources: position / restore


class FakeCtx:
    """What a source sees of a worker: emit, flow, share, name, bad_input, finished."""

    def __init__(self, share=(0, 1), stop_after=None):
        self.name = "src"
        self.share = share
        self.flow = FlowControl()
        self.values: list = []
        self.emits = 0
        self.stop_after = stop_after
        self.bad: list = []
        self.errors: list = []
        self.done = asyncio.Event()

    def emit(self, values):
        self.values.extend(values)
        self.emits += 1
        if self.stop_after is not None and self.emits >= self.stop_after:
            self.flow.block("barrier")       # what Checkpointer.begin does
        return True

    def bad_input(self, kind, value, exc):
        self.bad.append(kind)

    def user_error(self, stage, value, exc):
        self.errors.append(exc)
        return False

    def finished(self):
        self.done.set()

    def crash(self, exc):
        self.errors.append(exc)
        self.done.set()


async def read_all(cls, config, share=(0, 1), position=None):
    ctx = FakeCtx(share)
    source = cls(config, ctx)
    if position is not None:
        source.restore(pickle.loads(pickle.dumps(position)))
    await source.start()
    await ctx.done.wait()
    assert not ctx.errors
    return ctx.values, source


async def read_in_two(cls, config, stop_after, share=(0, 1)):
    """Read until the gate closes after ``stop_after`` emits, take the position (as a barrier
    does), stop; then a fresh source restored from it reads the rest."""
    ctx = FakeCtx(share, stop_after)
    source = cls(config, ctx)
    await source.start()
    for _ in range(1000):
        if ctx.flow.paused or ctx.done.is_set():
            break
        await asyncio.sleep(0)
    for _ in range(3):   # the producer now waits at the gate
        await asyncio.sleep(0)
    position = source.position()
    await source.stop()
    assert not ctx.errors
    rest, _ = await read_all(cls, config, share, position)
    return ctx.values, rest, position


def text_file(tmp_path, lines=12000, trailing_newline=True):
    rng = random.Random(lines)
    values = [f"line {i} " + "x" * rng.randrange(0, 40) for i in range(lines)]
    path = tmp_path / "in.txt"
    path.write_bytes(("\n".join(values) + ("\n" if trailing_newline else "")).encode())
    return path, values


@wallaroo.decoder(header_length=4, length_fmt=">I")
def raw_frame(payload):
    return payload


def framed_file(tmp_path, frames=6000):
    rng = random.Random(frames)
    payloads = [f"frame {i} ".encode() + b"y" * rng.randrange(0, 60) for i in range(frames)]
    path = tmp_path / "in.frames"
    path.write_bytes(b"".join(struct.pack(">I", len(p)) + p for p in payloads))
    return path, payloads


@pytest.mark.parametrize("stop_after", [1, 2, 5, 9])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_file_source_lines_resume_exactly(tmp_path, stop_after, trailing_newline):
    path, lines = text_file(tmp_path, trailing_newline=trailing_newline)
    assert os.path.getsize(path) > 8 * FEED_SIZE
    config = wallaroo.FileSourceConfig("src", path)
    first, rest, position = run(read_in_two(FileSource, config, stop_after))
    assert 0 < len(first) < len(lines)
    assert first + rest == lines
    # the offset is where the first line not yet emitted starts
    assert position["offset"] == len(("\n".join(first) + "\n").encode())


@pytest.mark.parametrize("stop_after", [1, 3])
@pytest.mark.parametrize("index", [0, 1])
def test_file_source_lines_share_of_two_resume_exactly(tmp_path, stop_after, index):
    path, lines = text_file(tmp_path, lines=16000)
    config = wallaroo.FileSourceConfig("src", path)

    async def main():
        whole = [(await read_all(FileSource, config, (i, 2)))[0] for i in (0, 1)]
        first, rest, _ = await read_in_two(FileSource, config, stop_after, (index, 2))
        return whole, first, rest
    whole, first, rest = run(main())
    assert whole[0] + whole[1] == lines          # every line read once over both shares
    assert whole[0] and whole[1]
    assert 0 < len(first) < len(whole[index])
    assert first + rest == whole[index]


@pytest.mark.parametrize("stop_after", [1, 2, 4])
@pytest.mark.parametrize("share", [(0, 1), (0, 2), (1, 2)])
def test_file_source_frames_resume_exactly(tmp_path, stop_after, share):
    path, payloads = framed_file(tmp_path)
    assert os.path.getsize(path) > 8 * FEED_SIZE
    config = wallaroo.FileSourceConfig("src", path, raw_frame)

    async def main():
        whole = [(await read_all(FileSource, config, (i, share[1])))[0]
                 for i in range(share[1])]
        first, rest, _ = await read_in_two(FileSource, config, stop_after, share)
        return whole, first, rest
    whole, first, rest = run(main())
    mine = payloads[share[0]::share[1]]
    assert whole[share[0]] == mine
    assert sorted(v for part in whole for v in part) == sorted(payloads)
    assert 0 < len(first) < len(mine)
    assert first + rest == mine


def test_file_source_position_after_the_end_emits_nothing_more(tmp_path):
    path, lines = text_file(tmp_path, lines=200, trailing_newline=False)
    config = wallaroo.FileSourceConfig("src", path)

    async def main():
        values, source = await read_all(FileSource, config)
        rest, _ = await read_all(FileSource, config, position=source.position())
        return values, source.position(), rest
    values, position, rest = run(main())
    assert values == lines and rest == []
    assert position["offset"] == os.path.getsize(path)


class UpTo:
    def __init__(self, total):
        self.total = total

    def initial_value(self):
        return 10

    def apply(self, previous):
        return previous + 3 if previous + 3 < self.total else None


@pytest.mark.parametrize("cls, config, expect", [
    (IterSource, SimpleNamespace(iterable=list(range(5000))), list(range(5000))),
    (IterSource, SimpleNamespace(iterable=range(3000)), list(range(3000))),
    (GenSource, SimpleNamespace(gen=UpTo(12000)), list(range(10, 12000, 3))),
])
@pytest.mark.parametrize("stop_after", [1, 2])
def test_producer_sources_go_on_after_the_position(cls, config, expect, stop_after):
    first, rest, position = run(read_in_two(cls, config, stop_after))
    assert 0 < len(first) < len(expect)
    assert position == {"count": len(first), "last": first[-1]}
    assert first + rest == expect


def test_gen_source_restore_uses_the_last_value_not_the_count():
    # apply() goes on from the checkpoint's last value: a generator is not re-run from the start
    calls = []

    class Doubling:
        def initial_value(self):
            calls.append("initial")
            return 1

        def apply(self, previous):
            return previous * 2 if previous < 2 ** 20 else None

    values, _ = run(read_all(GenSource, SimpleNamespace(gen=Doubling()),
                             position={"count": 5, "last": 16}))
    assert calls == [] and values[:2] == [32, 64] and values[-1] == 2 ** 20
    assert len(values) == 20 - 4


# =============================================================================================
# 7. FileSink two-phase commit


def sink_at(path):
    return FileSink(SimpleNamespace(path=str(path)),
                    SimpleNamespace(part_path=lambda p: p, resilient=True))


def push(sink, *values):
    sink.push(Batch(list(values)))


def pending_segments(path):
    return sorted(n for n in os.listdir(path.parent) if n.startswith(f".{path.name}.pending."))


def test_file_sink_prepare_hides_commit_applies_and_is_idempotent(tmp_path):
    path = tmp_path / "out.txt"
    path.write_bytes(b"old\n")

    async def main():
        sink = sink_at(path)
        assert sink.transactional
        await sink.start()
        await sink.recover(None, None)
        push(sink, b"a\n", b"b\n")
        record = await sink.prepare(1)
        seen = [path.read_bytes()]
        assert record["base"] == 4 and record["length"] == 4
        with open(record["segment"], "rb") as f:
            assert f.read() == b"a\nb\n"      # durable, not visible
        push(sink, b"c\n")                    # the next checkpoint's output
        seen.append(path.read_bytes())
        await sink.commit(1, record)
        seen.append(path.read_bytes())
        assert not os.path.exists(record["segment"])
        await sink.commit(1, record)          # again (a redo after a crash): no change
        seen.append(path.read_bytes())
        record2 = await sink.prepare(2)
        assert record2["base"] == 8 and record2["length"] == 2
        seen.append(path.read_bytes())
        await sink.commit(2, record2)
        seen.append(path.read_bytes())
        await sink.close()
        return seen

    seen = run(main())
    assert seen == [b"old\n", b"old\n", b"old\na\nb\n", b"old\na\nb\n", b"old\na\nb\n",
                    b"old\na\nb\nc\n"]
    assert pending_segments(path) == []


@pytest.mark.parametrize("cut", ["nothing_copied", "half_copied", "copied_not_unlinked",
                                 "garbage_after_base"])
def test_file_sink_recover_redoes_a_commit_cut_short(tmp_path, cut):
    path = tmp_path / "out.txt"

    async def first_run():
        sink = sink_at(path)
        await sink.start()
        await sink.recover(None, None)
        push(sink, b"one\n")
        r1 = await sink.prepare(1)
        await sink.commit(1, r1)
        push(sink, b"two\n", b"three\n")
        r2 = await sink.prepare(2)
        push(sink, b"after the checkpoint\n")   # uncommitted: dropped by the recovery
        return r2                               # crash: checkpoint 2's commit cut short

    record = run(first_run())
    assert path.read_bytes() == b"one\n"
    segment = record["segment"]
    if cut == "half_copied":
        with open(path, "ab") as f:
            f.write(b"tw")
    elif cut == "copied_not_unlinked":
        with open(path, "ab") as f:
            f.write(b"two\nthree\n")
    elif cut == "garbage_after_base":
        with open(path, "ab") as f:
            f.write(b"XXXXXXX")
        os.truncate(path, record["base"])     # the visible file back to base
    before = set(pending_segments(path))
    assert len(before) == 2                   # checkpoint 2's segment and the one after it

    async def restart():
        sink = sink_at(path)
        await sink.start()
        await sink.recover(2, pickle.loads(pickle.dumps(record)))
        push(sink, b"four\n")
        r3 = await sink.prepare(3)
        await sink.commit(3, r3)
        await sink.close()
        return r3

    r3 = run(restart())
    assert path.read_bytes() == b"one\ntwo\nthree\nfour\n"
    assert r3["base"] == len(b"one\ntwo\nthree\n")
    assert not os.path.exists(segment)
    assert pending_segments(path) == []


def test_file_sink_recover_to_an_older_checkpoint_truncates_later_commits(tmp_path):
    path = tmp_path / "out.txt"

    async def main():
        sink = sink_at(path)
        await sink.start()
        await sink.recover(None, None)
        push(sink, b"1\n")
        r1 = await sink.prepare(1)
        await sink.commit(1, r1)
        push(sink, b"2\n")
        r2 = await sink.prepare(2)
        await sink.commit(2, r2)
        await sink.close()
        assert path.read_bytes() == b"1\n2\n"
        again = sink_at(path)          # checkpoint 2 damaged: back to 1
        await again.start()
        await again.recover(1, r1)
        await again.close()

    run(main())
    assert path.read_bytes() == b"1\n"


def test_file_sink_recover_none_removes_stale_segments(tmp_path):
    path = tmp_path / "out.txt"
    path.write_bytes(b"kept\n")
    stale = [tmp_path / ".out.txt.pending.999.1", tmp_path / ".out.txt.pending.999.2"]
    for s in stale:
        s.write_bytes(b"uncommitted\n")
    other = tmp_path / ".other.txt.pending.999.1"
    other.write_bytes(b"another sink's\n")

    async def main():
        sink = sink_at(path)
        await sink.start()
        await sink.recover(None, None)
        fresh = pending_segments(path)
        push(sink, b"new\n")
        record = await sink.prepare(1)
        await sink.commit(1, record)
        await sink.close()
        return fresh, record

    fresh, record = run(main())
    assert all(not s.exists() for s in stale)
    assert other.exists()
    assert len(fresh) == 1 and fresh[0].startswith(f".out.txt.pending.{os.getpid()}.")
    assert record["base"] == 5
    assert path.read_bytes() == b"kept\nnew\n"
    assert pending_segments(path) == []


def test_file_sink_missing_segment_raises_naming_the_sink(tmp_path):
    path = tmp_path / "out.txt"

    async def first_run():
        sink = sink_at(path)
        await sink.start()
        await sink.recover(None, None)
        push(sink, b"lost\n")
        return await sink.prepare(1)

    record = run(first_run())
    os.unlink(record["segment"])

    async def restart():
        sink = sink_at(path)
        await sink.start()
        await sink.recover(1, record)

    with pytest.raises(OSError) as info:
        run(restart())
    assert f"file://{path}" in str(info.value)
    assert "missing" in str(info.value)
    # and through the forked child of a commit, the same error
    async def commit_in_child():
        sink = sink_at(path)
        await sink.start()
        await sink.commit(1, record)
    with pytest.raises(OSError, match="missing"):
        run(commit_in_child())
    assert path.read_bytes() == b""


# =============================================================================================
# 8. Whole-worker checkpoint and restore; ops across a pickle round trip


class MemorySinkConfig(SinkConfig):
    kind = "memory"

    def describe(self):
        return "memory"


MEMORY = {0: MemorySinkConfig(), 1: MemorySinkConfig()}


def events(n=3000, keys=5):
    return [(i * 10, f"k{i % keys}", i % 7) for i in range(n)]


async def uninterrupted(app):
    worker = Worker(app, RunOptions(), sink_configs=MEMORY)
    result = await worker.run()
    assert result.exit_code == 0, result.failure
    return [sink.values for sink in worker.sinks]


async def checkpoint_then_restore(app, tmp_path, total):
    """Worker 1 runs until its source has emitted part of the input, takes checkpoint 1
    (begin / take / release / commit), and runs on; a fresh worker restores checkpoint 1 and
    runs the rest. What worker 1 wrote before the barrier, then what worker 2 wrote."""
    store = CheckpointStore(str(tmp_path), app.name, "initializer")
    store.open()
    first = Worker(app, RunOptions(), sink_configs=MEMORY)
    saver = Checkpointer(first, store)
    await first.open_sinks()
    await first.open_sources()
    source = first.sources[0]
    while source.position()["count"] == 0:
        await asyncio.sleep(0)
    saver.begin(1)
    assert 0 < source.position()["count"] < total
    writing, info = await saver.take(1)
    cut = [len(s.values) for s in first.sinks]
    assert info["keys"] > 0
    saver.release()
    await writing.result()
    await saver.commit(1)
    await first.wait_stopped()
    await first.stop_input()
    await first.finish_output()
    whole_first = [list(s.values) for s in first.sinks]

    second = Worker(app, RunOptions(), sink_configs=MEMORY)
    restore, next_id = choose_restore([("initializer", Checkpointer(None, store).survey())])
    assert (restore, next_id) == (1, 2)
    await second.open_sinks()
    restored = await Checkpointer(second, store).restore(restore)
    assert restored["keys"] == info["keys"]
    await second.open_sources()
    await second.wait_stopped()
    await second.stop_input()
    await second.finish_output()
    combined = [a[:n] + b.values for a, n, b in zip(whole_first, cut, second.sinks)]
    return combined, whole_first


@pytest.mark.parametrize("slide", [None, 500], ids=["tumbling", "sliding"])
def test_worker_checkpoint_and_restore_equals_an_uninterrupted_run(tmp_path, slide):
    evs = events()
    app = units_app.build(evs, range_ns=1000, slide_ns=slide)
    expected = run(uninterrupted(app))
    assert len(expected[0]) == len(evs) and expected[1]
    combined, whole_first = run(checkpoint_then_restore(app, tmp_path, len(evs)))
    # holding input at the barrier changes nothing in the run that took the checkpoint
    assert whole_first == expected
    assert combined[0] == expected[0]
    assert combined[1] == expected[1]


class Items:
    def initial_accumulator(self):
        return []

    def update(self, value, acc):
        acc.append(value)

    def combine(self, a, b):
        return a + b

    def output(self, key, acc, window):
        return (key, window, sorted(acc))


def make_op(kind):
    if kind == "state":
        def fn(value, seen):
            seen.append(value)
            return (value, len(seen), sum(seen))
        return StateOp("state", fn, None, list, False)
    if kind == "tumbling":
        return RangeWindowOp("w", Items(), True, None, [0], 10 ** 15, 10, 10, 0, "drop")
    if kind == "sliding":
        return RangeWindowOp("w", Items(), True, None, [0], 10 ** 15, 10, 5, 0, "drop")
    if kind == "tumbling_delay":
        return RangeWindowOp("w", Items(), True, None, [0], 10 ** 15, 10, 10, 15, "drop")
    if kind == "session":
        return SessionWindowOp("w", Items(), True, None, [0], 10 ** 15, 5, 0, "drop")
    if kind == "count":
        return CountWindowOp("w", Items(), True, None, [0], 10 ** 15, 4, 10 ** 15)
    raise AssertionError(kind)


def feed(op, evs):
    out = []
    for start in range(0, len(evs), 3):    # small batches, as a source's
        part = evs[start:start + 3]
        batch = Batch([v for _, _, v in part], keys=[k for _, k, _ in part],
                      groups=[0] * len(part), event_times=[t for t, _, _ in part], origin=0,
                      watermark=max(t for t, _, _ in part))
        out += op.process(batch).values
    return out


def end(op):
    if isinstance(op, StateOp):
        return []
    return op.process(Batch([], origin=0, watermark=WATERMARK_END_OF_INPUT)).values


def in_order_events(n=200, keys=3, seed=0):
    rng = random.Random(seed)
    t, out = 0, []
    for i in range(n):
        t += rng.choice([0, 1, 2, 3, 7])
        out.append((t, f"k{rng.randrange(keys)}", i))
    return out


def op_round_trip(kind, evs, cut):
    whole = make_op(kind)
    expected = feed(whole, evs) + end(whole)
    before = make_op(kind)
    first = feed(before, evs[:cut])
    after = make_op(kind)
    if kind == "state":
        after.load_states(pickle.loads(pickle.dumps(before.states)))
    else:   # as a checkpoint does: the op's progress, then its open windows
        saved = pickle.loads(pickle.dumps((before.dump_progress(), before.dump_states()),
                                          protocol=pickle.HIGHEST_PROTOCOL))
        after.load_progress(saved[0])
        after.load_states(saved[1])
    return expected, first + feed(after, evs[cut:]) + end(after)


@pytest.mark.parametrize("kind", ["state", "tumbling", "tumbling_delay", "session", "count"])
@pytest.mark.parametrize("seed", range(4))
def test_ops_restored_from_a_pickle_go_on_like_an_uninterrupted_op(kind, seed):
    evs = in_order_events(seed=seed)
    for cut in (1, 37, 100, 199):
        expected, restored = op_round_trip(kind, evs, cut)
        assert expected, kind
        assert restored == expected, (kind, cut)


@pytest.mark.parametrize("seed", range(4))
def test_restored_range_window_fires_keys_in_the_order_of_an_uninterrupted_op(seed):
    """With a delay, several panes are open at the checkpoint. A window fires its keys in the
    order they reached the pane (``keys_of_pane``); a restored op must rebuild that order (it
    comes with the op's progress), or a file sink's output differs from an uninterrupted
    run's."""
    evs = in_order_events(seed=seed)
    for cut in (37, 100, 199):
        expected, restored = op_round_trip("tumbling_delay", evs, cut)
        assert restored == expected, cut


@pytest.mark.parametrize("seed", range(4))
def test_sliding_range_window_restored_from_a_pickle_fires_no_window_twice(seed):
    evs = in_order_events(seed=seed)
    for cut in (37, 100):
        expected, restored = op_round_trip("sliding", evs, cut)
        assert restored == expected, cut


@pytest.mark.parametrize("kind", ["tumbling", "session"])
def test_late_data_after_a_restore_is_dropped_as_without_it(kind):
    # (1, a), (20, a): the watermark reaches 20; then 3 is late (its windows have fired)
    evs = [(1, "a", 1), (20, "a", 20), (3, "a", 3), (40, "a", 40)]
    whole = make_op(kind)
    expected = []
    for ev in evs:
        expected += feed(whole, [ev])
    expected += end(whole)
    assert whole.late == 1
    before = make_op(kind)
    first = feed(before, evs[:1]) + feed(before, evs[1:2])
    after = make_op(kind)
    after.load_progress(pickle.loads(pickle.dumps(before.dump_progress())))
    after.load_states(pickle.loads(pickle.dumps(before.dump_states())))
    rest = []
    for ev in evs[2:]:
        rest += feed(after, [ev])
    rest += end(after)
    assert first + rest == expected


# =============================================================================================
# 9. SourceContext holds what sources emit while a barrier is pending


def test_source_context_holds_emits_and_end_of_input_until_release(tmp_path):
    app = units_app.build([], range_ns=1000)

    async def main():
        worker = Worker(app, RunOptions(), sink_configs=MEMORY)
        await worker.open_sinks()
        store = CheckpointStore(str(tmp_path), "held", "w0")
        store.open()
        saver = Checkpointer(worker, store)
        ctx = worker.source_contexts[0]
        states, windows = worker.sinks
        ctx.emit([(5, "a", 1), (15, "a", 2)])
        assert [v[1] for v in states.values] == [1, 3]
        saver.begin(1)
        assert worker.barrier_pending and worker.flow.paused
        ctx.emit([(25, "a", 4)])
        ctx.emit([(1500, "b", 8), (1600, "a", 16)])
        ctx.finished()                   # the end-of-input watermark, held too
        assert worker.input_done
        seen_while_held = (list(states.values), list(windows.values))
        writing, info = await saver.take(1)
        assert info["keys"] == 2         # 'a' in the state; the window's 'a' (1 window)
        # the snapshot holds the state from before the barrier only
        assert await writing.result() > 0
        saver.release()
        assert not worker.barrier_pending and not worker.flow.paused
        snapshot = pickle.loads(store.read(1))
        return seen_while_held, states.values, windows.values, snapshot

    (held_states, held_windows), states, windows, snapshot = run(main())
    assert [v[1] for v in held_states] == [1, 3] and held_windows == []
    # released in order: the values first, then the end of input fires every window
    assert [(k, n) for k, n, _ in states] == [("a", 1), ("a", 3), ("a", 7), ("b", 8),
                                                 ("a", 23)]
    assert windows == [("a", (0, 1000), 7, 3), ("b", (1000, 2000), 8, 1),
                       ("a", (1000, 2000), 16, 1)]
    assert snapshot["states"]["running"]["a"].n == 3
    assert snapshot["sources"] == {"events": {"count": 0, "last": None}}


# =============================================================================================
# CheckpointRounds: a round ends when a worker it waits for goes away (even the final round,
# which the coordinator awaits in its own loop)
# =============================================================================================

class _RoundMember:
    def __init__(self, name):
        self.name, self.lost, self.sent = name, False, []

    def send(self, message):
        self.sent.append(message["type"])


def test_a_round_fails_when_a_worker_it_waits_for_is_lost():
    from types import SimpleNamespace

    from wallaroo.cluster.rounds import CheckpointRounds

    members = [_RoundMember("w0"), _RoundMember("w1")]
    rounds = CheckpointRounds(SimpleNamespace(members=members), 1.0)

    async def go():
        final = asyncio.ensure_future(rounds.final())
        await asyncio.sleep(0.01)
        rounds.answer(members[0], {"type": "checkpointed", "id": 1, "bytes": 1})
        rounds.lost(members[1])
        return await asyncio.wait_for(final, 1.0)

    assert asyncio.run(go()) is False
    assert members[0].sent == ["checkpoint"]        # no commit for an incomplete round
    assert rounds.last_complete is None


def test_after_a_failed_round_the_final_round_takes_no_checkpoint():
    """A round that fails (a sink voted no, a snapshot writer died) ends the rounds: the
    final round must not take and commit a later checkpoint over the failed one's output."""
    from types import SimpleNamespace

    from wallaroo.cluster.rounds import CheckpointRounds

    members = [_RoundMember("w0"), _RoundMember("w1")]
    rounds = CheckpointRounds(SimpleNamespace(members=members), 1.0)

    async def go():
        first = asyncio.ensure_future(rounds.round())
        await asyncio.sleep(0.01)
        rounds.answer(members[0], {"type": "checkpointed", "id": 1})
        rounds.answer(members[1], {"type": "checkpoint_failed", "id": 1, "error": "vote no"})
        return await first, await asyncio.wait_for(rounds.final(), 1.0)

    assert asyncio.run(go()) == (False, False)
    assert members[0].sent == members[1].sent == ["checkpoint"]


def test_the_final_round_completes_only_once_every_worker_has_committed():
    from types import SimpleNamespace

    from wallaroo.cluster.rounds import CheckpointRounds

    def run(commit_reply):
        members = [_RoundMember("w0"), _RoundMember("w1")]
        rounds = CheckpointRounds(SimpleNamespace(members=members), 1.0)

        async def go():
            final = asyncio.ensure_future(rounds.final())
            await asyncio.sleep(0.01)
            for m in members:
                rounds.answer(m, {"type": "checkpointed", "id": 1})
            await asyncio.sleep(0.01)
            assert not final.done()                     # waiting for the commits
            rounds.answer(members[0], {"type": "committed", "id": 1})
            rounds.answer(members[1], {**commit_reply, "id": 1})
            return await asyncio.wait_for(final, 1.0)

        return asyncio.run(go()), members[1].sent

    assert run({"type": "committed"}) == (True, ["checkpoint", "commit"])
    failed = {"type": "checkpoint_failed", "error": "No space left on device", "fatal": True}
    assert run(failed) == (False, ["checkpoint", "commit"])
