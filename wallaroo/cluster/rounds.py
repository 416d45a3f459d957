"""The coordinator's side of checkpoints: a round every ``--time-between-checkpoints``, and the
choice of the checkpoint every worker restores after a restart.

A round: send ``checkpoint n`` to every worker (each injects the barrier at its sources and
aligns it, see wallaroo.cluster.barriers); once every worker has said ``checkpointed n`` (its
snapshot is durable, its sinks have voted yes), checkpoint n is complete: send ``commit n``
(each records it, and its sinks make n's output visible). One round at a time; a worker that
fails to take its part (a sink votes no, its disk is full, it dies) ends the round, and the
coordinator rolls the cluster back or stops it.

Example::

    >>> choose_restore([("w0", {"committed": 3, "readable": [2, 3], "highest": 4}),
    ...                 ("w1", {"committed": 2, "readable": [2, 3, 4], "highest": 4})])
    (3, 5)
"""
from __future__ import annotations

import asyncio
import logging
import statistics
import time

log = logging.getLogger("wallaroo")

#: Seconds a checkpoint round may take before it fails (a worker stuck in user code).
ROUND_TIMEOUT = 600.0


class NoCheckpoint(Exception):
    """Some checkpoint was completed, but no complete one can be read on every worker."""


def choose_restore(surveys: list[tuple[str, dict]]) -> tuple[int | None, int]:
    """(the checkpoint to restore, the next checkpoint id) from each worker's survey (see
    ``Checkpointer.survey``): the last complete checkpoint that every worker can read; an
    older one (with a warning) when the last one is damaged somewhere; None when no checkpoint
    was ever completed (a fresh start).

    Example (worker w1's copy of checkpoint 7 is damaged: 6 is used)::

        >>> choose_restore([("w0", {"committed": 7, "readable": [6, 7], "highest": 7}),
        ...                 ("w1", {"committed": 7, "readable": [6], "highest": 7,
        ...                         "damaged": {"7": "truncated"}})])
        (6, 8)
        >>> choose_restore([("w0", {}), ("w1", {})])
        (None, 1)
    """
    committed = max((s.get("committed") or 0 for _, s in surveys), default=0)
    highest = max((s.get("highest") or 0 for _, s in surveys), default=0)
    readable = set.intersection(*(set(s.get("readable") or ()) for _, s in surveys)) \
        if surveys else set()
    if committed == 0:
        if not any(s.get("committed_damaged") for _, s in surveys):
            return None, highest + 1    # no checkpoint ever completed: a fresh start
        # Every record of the last complete checkpoint is damaged: a snapshot that every
        # worker wrote had every sink's vote (a worker writes it only after its phase 1),
        # so the newest of them may be restored.
        log.warning("the record of the last complete checkpoint is damaged on every worker "
                    "that has one; restoring the newest checkpoint every worker has")
        committed = highest
    candidates = [n for n in readable if n <= committed]
    for name, survey in surveys:
        for n, why in (survey.get("damaged") or {}).items():
            log.warning("worker %s: checkpoint %s cannot be used: %s", name, n, why)
    if not candidates:
        raise NoCheckpoint(
            f"checkpoint {committed} was completed, but no complete checkpoint can be read on "
            f"every worker (see the warnings above); to start afresh instead, remove the "
            f"app's folder in --resilience-dir")
    restore = max(candidates)
    if restore != committed:
        log.warning("checkpoint %d is damaged on some worker: going back to checkpoint %d "
                    "(output committed after it is written again)", committed, restore)
    return restore, highest + 1


class CheckpointRounds:
    """Runs checkpoint rounds for ``coordinator`` every ``interval`` seconds (see the module
    docstring); ``final()`` takes one more as the run ends, so that all output is committed.

    Example::

        >>> rounds = CheckpointRounds(None, 1.0)
        >>> rounds.next_id, rounds.last_complete, rounds.summary()
        (1, None, {'completed': 0})
    """

    def __init__(self, coordinator, interval: float):
        self.coordinator = coordinator
        self.interval = interval
        self.next_id = 1
        self.last_complete: int | None = None
        self.durations: list[float] = []
        self.sizes: list[int] = []
        #: Per checkpoint, the longest any worker held its input (seconds).
        self.stalls: list[float] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._stopped = False
        self._final = False
        self._waiting: dict[int, dict] = {}

    def start(self) -> None:
        """Begin taking a checkpoint every ``interval`` seconds."""
        self._task = asyncio.get_running_loop().create_task(self._every_interval())

    def stop(self) -> None:
        """Take no more checkpoints (the run ends, fails or rolls back)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
        for future in self._waiting.values():
            for f in future.values():
                if not f.done():
                    f.set_result(None)

    async def final(self) -> bool:
        """One last checkpoint as the run ends (after the round in flight, if any); whether
        it completed and every worker has committed it (made its output visible)."""
        self._final = True
        if self._task is not None and not self._lock.locked():
            self._task.cancel()   # it sleeps: no round is cut short
        return await self.round()

    async def _every_interval(self) -> None:
        while not self._stopped and not self._final:
            await asyncio.sleep(self.interval)
            if self._final or not await self.round():
                return

    async def round(self) -> bool:
        """Take one checkpoint over every worker; whether it completed (a failure is left
        among the coordinator's events)."""
        async with self._lock:
            if self._stopped:
                return False
            checkpoint_id = self.next_id
            self.next_id += 1
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            futures = {m.name: loop.create_future() for m in self.coordinator.members}
            self._waiting[checkpoint_id] = futures
            for member in self.coordinator.members:
                if member.lost:
                    futures[member.name].set_result(None)
                member.send({"type": "checkpoint", "id": checkpoint_id})
            try:
                replies = await asyncio.wait_for(asyncio.gather(*futures.values()),
                                                 ROUND_TIMEOUT)
            except asyncio.TimeoutError:
                late = [name for name, f in futures.items() if not f.done()]
                log.error("checkpoint %d: no answer from %s within %.0f s", checkpoint_id,
                          ", ".join(late), ROUND_TIMEOUT)
                self._stopped = True
                self.coordinator.round_timed_out(checkpoint_id, late)
                return False
            finally:
                del self._waiting[checkpoint_id]
            if self._stopped or any(r is None or r.get("type") != "checkpointed"
                                    for r in replies):
                self._stopped = True   # the coordinator rolls back or stops: no more rounds
                return False
            if self._final:   # the run ends after this one: wait until every commit is done
                self._waiting[checkpoint_id] = futures = {
                    m.name: loop.create_future() for m in self.coordinator.members}
            for member in self.coordinator.members:
                member.send({"type": "commit", "id": checkpoint_id})
            if self._final:
                try:
                    done = await asyncio.wait_for(asyncio.gather(*futures.values()),
                                                  ROUND_TIMEOUT)
                except asyncio.TimeoutError:
                    done = [None]
                finally:
                    del self._waiting[checkpoint_id]
                if any(r is None or r.get("type") != "committed" for r in done):
                    self._stopped = True
                    return False
            self.last_complete = checkpoint_id
            self.durations.append(time.monotonic() - started)
            self.sizes.append(sum(r.get("bytes", 0) for r in replies))
            self.stalls.append(max(r.get("seconds", 0.0) for r in replies))
            metrics = getattr(self.coordinator, "metrics", None)
            if metrics is not None:
                metrics.checkpoint_done(checkpoint_id, self.durations[-1], self.sizes[-1])
            log.debug("checkpoint %d complete in %.0f ms: %d bytes, %d keys", checkpoint_id,
                      self.durations[-1] * 1000, self.sizes[-1],
                      sum(r.get("keys", 0) for r in replies))
            return True

    def lost(self, member) -> None:
        """``member`` went away: a round waiting for its answer ends (failed)."""
        for futures in self._waiting.values():
            future = futures.get(member.name)
            if future is not None and not future.done():
                future.set_result(None)

    def answer(self, member, message: dict) -> bool:
        """Take a worker's ``checkpointed``, ``committed`` or ``checkpoint_failed``; True if it
        was awaited and is not a failure (a failure is also left among the coordinator's
        events)."""
        futures = self._waiting.get(message.get("id"))
        if futures is None:
            return False
        future = futures.get(member.name)
        if future is not None and not future.done():
            future.set_result(message)
        return message.get("type") in ("checkpointed", "committed")

    def summary(self) -> dict:
        """Checkpoints completed, the last one, median duration (s), longest input hold of
        a worker (s) and size (bytes)."""
        if not self.durations:
            return {"completed": 0}
        return {"completed": len(self.durations), "last": self.last_complete,
                "median_seconds": statistics.median(self.durations),
                "median_stall_seconds": statistics.median(self.stalls),
                "median_bytes": statistics.median(self.sizes)}
