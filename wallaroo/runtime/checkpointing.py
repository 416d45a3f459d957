"""One worker's part in checkpoints: hold its input at a barrier, snapshot its state, prepare
its sinks, write the snapshot, commit; and restore all of it after a restart.

A checkpoint's snapshot holds, for this worker: the state of every key it owns in every state
computation and window (by key; a key's group is ``key_group(key)``), every source's position,
and every transactional sink's phase-1 record. State is taken at the barrier (nothing moves
meanwhile), then pickled and written by a forked child while processing goes on (see
wallaroo.connectors.forked); the checkpoint counts once the coordinator has every
worker's acknowledgement.

Example (one worker, by hand: a barrier, a commit, and a restore into a fresh worker)::

    >>> import asyncio, tempfile, wallaroo
    >>> from wallaroo.runtime.checkpoint_store import CheckpointStore
    >>> from wallaroo.runtime.worker import Worker
    >>> count = wallaroo.state_computation(name="count", state=list)(
    ...     lambda word, seen: seen.append(word) or len(seen))
    >>> app = wallaroo.build_application("wc", wallaroo.source(
    ...     "w", wallaroo.IterSourceConfig("w", ["a", "b", "a"])).key_by(str).to(count)
    ...     .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(lambda n: ""))))
    >>> store = CheckpointStore(tempfile.mkdtemp(), "wc", "worker-0")
    >>> store.open()
    >>> async def checkpoint_then_restore():
    ...     worker = Worker(app)
    ...     worker.stateful_ops()[0].states.update({"a": ["a", "a"]})
    ...     saver = Checkpointer(worker, store)
    ...     saver.begin(1)
    ...     writing, info = await saver.take(1)
    ...     saver.release()
    ...     _ = await writing.result()
    ...     await saver.commit(1)
    ...     fresh = Worker(app)
    ...     restored = await Checkpointer(fresh, store).restore(1)
    ...     return info["keys"], restored["keys"], fresh.state_counts()
    >>> asyncio.run(checkpoint_then_restore())
    (1, 1, {'count': 1})
"""
from __future__ import annotations

import gc
import logging
import pickle
import time

from wallaroo._core.windows import WindowOp
from wallaroo.runtime.checkpoint_store import CheckpointError, CheckpointStore
from wallaroo.connectors.forked import start_in_child

log = logging.getLogger("wallaroo")

#: Who holds the source gate closed while a barrier is being aligned.
BARRIER = "checkpoint barrier"


class Checkpointer:
    """Takes and restores ``worker``'s checkpoints in ``store`` (see the module docstring).

    The steps of one checkpoint: ``begin(n)`` (the barrier reaches this worker: sources stop,
    their positions are taken), ``take(n)`` (every input is aligned: snapshot, sinks' phase 1,
    write), ``release()`` (input flows again), later ``commit(n)`` (every worker has it).
    """

    def __init__(self, worker, store: CheckpointStore):
        self.worker = worker
        self.store = store
        self._positions: dict = {}
        self._began = 0.0
        #: Phase-1 records and source positions of checkpoints taken but not yet committed.
        self._pending: dict[int, tuple[list, dict]] = {}

    def begin(self, checkpoint_id: int) -> None:
        """The barrier of ``checkpoint_id`` reached this worker: close the source gate (what a
        source emits from now on waits until ``release``) and take every source's position."""
        worker = self.worker
        self._began = time.perf_counter()
        worker.flow.block(BARRIER)
        worker.barrier_pending = True
        self._positions = {ctx.name: source.position()
                           for ctx, source in zip(worker.source_contexts, worker.sources)}

    async def take(self, checkpoint_id: int) -> tuple:
        """Every input is aligned: run the sinks' phase 1 and start writing the snapshot of
        the state as it is now (see wallaroo.connectors.forked). The write in progress
        (``await writing.result()`` gives its size) and what it holds: ``keys``, and
        ``seconds`` the worker's input has been held since the barrier reached it."""
        worker = self.worker
        states = {op.name: _state_of(op) for op in worker.stateful_ops()}
        progress = {op.name: op.dump_progress() for op in worker.stateful_ops()
                    if isinstance(op, WindowOp)}
        records = []
        for sink in worker.sinks:
            records.append(await sink.prepare(checkpoint_id) if sink.transactional else None)
        writing = start_in_child(_write_snapshot, self.store, checkpoint_id, {
            "checkpoint": checkpoint_id, "worker": worker.placement.name,
            "key_groups": worker.options.key_groups, "states": states,
            "progress": progress, "sources": self._positions, "sinks": records})
        self._pending[checkpoint_id] = (records, self._positions)
        return writing, {"keys": sum(len(s) for s in states.values()),
                         "seconds": time.perf_counter() - self._began}

    def release(self) -> None:
        """Let input flow again (what sources emitted meanwhile goes on first)."""
        worker = self.worker
        worker.barrier_pending = False
        for ctx in worker.source_contexts:
            ctx.release_held()
        worker.flow.unblock(BARRIER)

    async def commit(self, checkpoint_id: int) -> None:
        """Every worker has ``checkpoint_id``: record it durably, make the sinks' output of it
        visible (phase 2), tell the sources, forget older checkpoints."""
        self.store.mark_committed(checkpoint_id)   # a few bytes: at once
        records, positions = self._pending.pop(checkpoint_id, ([], {}))
        for older in [n for n in self._pending if n < checkpoint_id]:
            del self._pending[older]
        for sink, record in zip(self.worker.sinks, records):
            if record is not None:
                await sink.commit(checkpoint_id, record)
        for ctx, source in zip(self.worker.source_contexts, self.worker.sources):
            if ctx.name in positions:
                source.checkpoint_complete(positions[ctx.name])
        self.store.prune()

    # -- after a restart ------------------------------------------------------------------

    def survey(self) -> dict:
        """What this worker has on disk, for the coordinator to choose the checkpoint every
        worker restores: the last it knows complete, those it can read (checked), those
        damaged (with why), and the highest id used.

        Example::

            >>> import tempfile
            >>> store = CheckpointStore(tempfile.mkdtemp(), "app", "w0"); store.open()
            >>> _ = store.write(4, b"x"); store.mark_committed(4)
            >>> Checkpointer(None, store).survey()
            {'committed': 4, 'readable': [4], 'damaged': {}, 'committed_damaged': False, 'highest': 4}
        """
        readable, damaged = [], {}
        for n in self.store.ids():
            try:
                self.store.read(n)
                readable.append(n)
            except CheckpointError as exc:
                damaged[n] = str(exc)
        committed = self.store.committed()
        return {"committed": committed, "readable": readable, "damaged": damaged,
                "committed_damaged": committed is None and self.store.has_committed_record(),
                "highest": max([*readable, *damaged, committed or 0], default=0)}

    async def restore(self, checkpoint_id: int | None) -> dict:
        """Load checkpoint ``checkpoint_id`` (None: start afresh) into the worker before its
        sources open: state, source positions, and the sinks' recovery (they redo its commit
        and drop what came after). What was restored: ``keys``, ``bytes``, ``seconds``."""
        started = time.perf_counter()
        worker = self.worker
        self.store.discard_after(checkpoint_id if checkpoint_id is not None else -1)
        if checkpoint_id is None:
            for sink in worker.sinks:
                if sink.transactional:
                    await sink.recover(None, None)
            return {"checkpoint": None, "keys": 0, "bytes": 0,
                    "seconds": time.perf_counter() - started}
        raw = self.store.read(checkpoint_id)
        collecting = gc.isenabled()
        gc.disable()   # a million new objects would trigger collections that find nothing
        try:
            snapshot = pickle.loads(raw)
        finally:
            if collecting:
                gc.enable()
        keys = 0
        for op in worker.stateful_ops():
            if op.name in snapshot["progress"]:   # a window: its watermark first
                op.load_progress(snapshot["progress"][op.name])
            state = snapshot["states"].get(op.name)
            if state:
                keys += len(state)
                op.load_states(state)
        for ctx, source in zip(worker.source_contexts, worker.sources):
            position = snapshot["sources"].get(ctx.name)
            if position is not None:
                source.restore(position)
        for sink, record in zip(worker.sinks, snapshot["sinks"]):
            if sink.transactional:
                await sink.recover(checkpoint_id, record)
        self.store.mark_committed(checkpoint_id)
        return {"checkpoint": checkpoint_id, "keys": keys, "bytes": len(raw),
                "seconds": time.perf_counter() - started}


def _write_snapshot(store: CheckpointStore, checkpoint_id: int, snapshot: dict) -> int:
    """Pickle and write a snapshot durably (in the forked child); its size."""
    return store.write(checkpoint_id, pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL))


def _state_of(op) -> dict:
    """The op's state by key, as it is now (pickled at once by the caller)."""
    return op.dump_states() if isinstance(op, WindowOp) else op.states


