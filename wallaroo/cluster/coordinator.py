"""The coordinator: runs the life of a cluster of workers over their control connections, and
answers the external control port.

It starts the workers together once each is ready, ends a run when it is over, stops it when
asked, and stops every worker when one fails or goes away:

- **End of input.** A run of bounded sources is over when every worker's input is done and
  nothing is in flight between workers. The coordinator probes every worker for (input done,
  records sent, records taken); when all inputs are done and the cluster-wide totals of sent
  and taken records are equal, and again equal and unchanged at the next probe, nothing can
  be in flight (each worker runs a record to the end before it answers), so it tells every
  worker to ``finish``: flush its sinks and end.
- **Stop** (a signal, or ``shutdown`` on the external port): every worker stops its sources,
  the end of input fires the windows, then the run ends as above. A second stop request
  tells the workers not to wait for their sinks.
- **Failure**: a worker whose stage failed, or that went away, makes the coordinator
  ``abort`` the others: they stop at once, windows unfired.

Example::

    >>> asyncio.run(Coordinator([], key_groups=4).status())
    {'worker_names': [], 'worker_count': 0, 'processing_messages': False}
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

from wallaroo.cluster.rounds import ROUND_TIMEOUT, CheckpointRounds, NoCheckpoint, choose_restore
from wallaroo.cluster.wire import WireError, read_message, send_soon
from wallaroo.runtime.placement import Placement

log = logging.getLogger("wallaroo")

#: Seconds between probes once every worker's input is done.
PROBE_INTERVAL = 0.005
#: Seconds a worker has to answer a probe or a query.
ANSWER_TIMEOUT = 10.0
#: Seconds to wait, when a link between two workers breaks, for one of them to be found gone.
LINK_LOSS_GRACE = 2.0
#: Seconds beyond --flush-timeout a worker may take to report once told to finish.
FINISH_GRACE = 10.0
#: Seconds the workers have to end after a rollback before they are stopped regardless.
ROLLBACK_GRACE = 1.0


@dataclass(eq=False)
class MemberHandle:
    """The coordinator's view of one worker: its name, index, control connection and what it
    last said.

    Example::

        >>> class Writer:
        ...     def is_closing(self): return False
        ...     def write(self, data): print(data)
        >>> MemberHandle("w1", 1, reader=None, writer=Writer()).send({"type": "start"})
        b'\\x00\\x00\\x00\\x10{"type":"start"}'
    """

    name: str
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pid: int | None = None
    ready: dict | None = None
    done: dict | None = None
    input_done: bool = False
    lost: bool = False
    answers: dict = field(default_factory=dict)

    def send(self, message: dict) -> None:
        """Send a control message to this worker (without waiting)."""
        send_soon(self.writer, message)


class Coordinator:
    """Drives ``members`` (MemberHandles, by index) through a run; ``run()`` returns each
    worker's summary (None for one that went away).

    ``describe_loss(index)`` (a coroutine) words why a worker went away (the supervisor knows
    its exit status); ``on_ready(members)`` is called once every worker is ready and started.

    Example (a worker says it is ready, then its control connection closes; see
    wallaroo.cluster.member.Member for a whole run)::

        >>> from wallaroo.cluster.wire import decode_message, encode_message
        >>> class Writer:
        ...     def __init__(self): self.sent = []
        ...     def is_closing(self): return False
        ...     def write(self, data): self.sent.append(decode_message(data[4:])["type"])
        ...     def close(self): pass
        >>> async def a_worker_goes_away():
        ...     reader, writer = asyncio.StreamReader(), Writer()
        ...     reader.feed_data(encode_message({"type": "ready"}))
        ...     reader.feed_eof()
        ...     coordinator = Coordinator([MemberHandle("w0", 0, reader, writer)], key_groups=4)
        ...     summaries = await coordinator.run()
        ...     return summaries, coordinator.failure, writer.sent
        >>> asyncio.run(a_worker_goes_away())
        ([None], 'worker w0 went away (its control connection closed)', ['start', 'abort'])
    """

    def __init__(self, members: list[MemberHandle], key_groups: int, describe_loss=None,
                 on_ready=None, flush_timeout: float = 30.0,
                 checkpoint_interval: float | None = None, metrics=None):
        self.members = members
        #: The metrics hub the workers' reports go to (wallaroo.metrics.hub), if any.
        self.metrics = metrics
        #: With resilience on, seconds between checkpoints (see wallaroo.cluster.rounds).
        self.rounds = CheckpointRounds(self, checkpoint_interval) if checkpoint_interval else None
        #: Why the cluster must go back to its last checkpoint (a worker was lost): the
        #: workers are restarted, and restore it.
        self.rollback: str | None = None
        #: After a stop, how long messages may still be on their way before the run ends
        #: without them (``--flush-timeout``).
        self.flush_timeout = flush_timeout
        self._stall_deadline = 0.0
        self.key_groups = key_groups
        self.describe_loss = describe_loss or _connection_closed
        self.on_ready = on_ready
        self.started = False
        self.stopping = False
        self.finishing = False
        self.failure: str | None = None
        self._events: asyncio.Queue = asyncio.Queue()
        #: Who asked to stop (a worker, or None for the coordinator's own signal or the
        #: external port): a second request from the same one stops waiting for sinks, while
        #: one signal reaching every process at once (systemd, pkill -f) is one request.
        self._stop_requests: dict = {}
        self._ids = itertools.count(1)
        self._listeners: list[asyncio.Task] = []

    # -- what the external control port asks ------------------------------------------------

    async def status(self) -> dict:
        """Worker names and count, and whether the cluster is processing messages."""
        return {"worker_names": [m.name for m in self.members],
                "worker_count": len(self.members),
                "processing_messages": self.started and not self.stopping and not self.finishing}

    async def partitions(self) -> dict:
        """Key group -> worker (as each worker's list of groups), and keys per worker per
        state computation."""
        table = Placement(0, max(1, len(self.members)), key_groups=self.key_groups).routing_table()
        counts = await self._state_counts()
        return {"key_groups": self.key_groups,
                "workers": {m.name: table.groups_of(m.index) for m in self.members},
                "state_partitions": counts}

    async def state_entities(self) -> dict:
        """Per state computation: keys on each worker, and their total."""
        counts = await self._state_counts()
        return {stage: {"workers": per_worker, "total": sum(per_worker.values())}
                for stage, per_worker in counts.items()}

    async def shutdown(self) -> dict:
        """A clean shutdown: every worker stops its input, flushes its sinks and exits 0."""
        self.request_stop()
        return {"shutting_down": True, "worker_count": len(self.members)}

    async def _state_counts(self) -> dict:
        replies = await self._ask_all({"type": "query"})
        counts: dict[str, dict[str, int]] = {}
        for member, reply in zip(self.members, replies):
            for stage, n in (reply or {}).get("data", {}).get("state", {}).items():
                counts.setdefault(stage, {})[member.name] = n
        return counts

    # -- the run ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop the run cleanly (a signal, an external shutdown); a second request stops
        waiting for sinks."""
        self._events.put_nowait(("stop_requested", None, {}))

    async def run(self) -> list[dict | None]:
        """Run the cluster from start to end: start the workers once all are ready, end the
        run when it is over, stopped or failed (``failure`` then says why), and wait until
        every worker is done or gone. Each worker's summary, by index (None for one that went
        away); the control connections are closed."""
        loop = asyncio.get_running_loop()
        self._listeners = [loop.create_task(self._listen(m)) for m in self.members]
        try:
            if await self._start():
                await self._serve()
            await self._wait_done()
            if (self.rounds is not None and self.failure is None and self.rollback is None
                    and all(m.done is not None for m in self.members)):
                # every worker has committed and finished: nothing is left to recover
                self._broadcast({"type": "clear"})
        finally:
            for task in self._listeners:
                task.cancel()
            for member in self.members:
                member.writer.close()
        return [m.done for m in self.members]

    async def _start(self) -> bool:
        """Wait until every worker is ready (sinks and links open), start them all, and wait
        until every one has opened its sources."""
        if not await self._all_say("ready"):
            return False
        start = {"type": "start"}
        if self.rounds is not None:
            try:
                start["restore"], self.rounds.next_id = choose_restore(
                    [(m.name, m.ready.get("checkpoints") or {}) for m in self.members])
            except NoCheckpoint as exc:
                log.error("%s", exc)
                self._abort(str(exc))
                return False
        self._broadcast(start)
        if not await self._all_say("started"):
            return False
        self.started = True
        if self.rounds is not None:
            self.rounds.start()
        log.info("cluster ready: %d workers (%s)", len(self.members),
                 ", ".join(m.name for m in self.members))
        if self.on_ready is not None:
            self.on_ready(self.members)
        return True

    async def _all_say(self, what: str) -> bool:
        waiting = set(self.members)
        while waiting:
            kind, member, message = await self._events.get()
            if kind == what:
                waiting.discard(member)
            elif kind == "stop_requested" and member is None:
                self._abort("the run was stopped before every worker was ready")
                return False
            elif kind in ("lost", "failed"):
                await self._member_failed(member, message)
                return False
            elif kind == "input_done":
                member.input_done = True
        return True

    async def _serve(self) -> None:
        previous = last_moving = None
        loop = asyncio.get_running_loop()
        while True:
            probing = self.stopping or all(m.input_done for m in self.members)
            try:
                kind, member, message = await asyncio.wait_for(
                    self._events.get(), PROBE_INTERVAL if probing else None)
            except asyncio.TimeoutError:
                totals, moving = await self._probe()
                if totals is not None and totals == previous:
                    if self.rounds is not None and not await self.rounds.final():
                        continue   # the failure is among the events: handled below
                    self._finish()
                    return
                previous = totals
                if moving != last_moving:   # records still flow: wait on
                    last_moving, self._stall_deadline = moving, loop.time() + self.flush_timeout
                elif loop.time() > self._stall_deadline:
                    self._finish(f"messages have been stuck on their way between workers for "
                                 f"{self.flush_timeout:g} s (--flush-timeout) after the input "
                                 f"ended (a sink that does not read?); they are not delivered")
                    return
                continue
            if kind == "input_done":
                member.input_done = True
            elif kind == "stop_requested":
                if self._repeated_stop(member):
                    self._finish("a second stop request: the workers stopped without waiting "
                                 "for what was still on its way")
                    return
                if not self.stopping:
                    log.info("stopping: every worker stops its input and flushes its sinks")
                    self.stopping = True
                    self._broadcast({"type": "stop"})
            elif kind in ("lost", "failed"):
                await self._member_failed(member, message)
                return
            elif kind == "link_lost":
                await self._link_lost(member, message.get("peer"))
                return
            elif kind == "done":  # a worker ended by itself: it could not go on
                await self._member_failed(member, {"error": "it ended on its own"})
                return
            elif kind == "checkpoint_failed":
                where = f" on worker {member.name}" if member is not None else ""
                why = f"checkpoint {message.get('id')} failed{where}: {message.get('error')}"
                if message.get("fatal"):
                    log.error("%s; stopping the run", why)
                    self._abort(why)
                else:
                    self._roll_back(why)
                return

    def _finish(self, failure: str | None = None) -> None:
        """Tell every worker to flush its sinks and end; with ``failure``, the run ends
        without what was still in flight, and that makes it fail."""
        if failure is not None:
            log.error("%s", failure)
            self.failure = failure
            self._broadcast({"type": "abandon"})
        self.finishing = True
        if self.rounds is not None:
            self.rounds.stop()
        self._broadcast({"type": "finish", "why": failure})

    def _repeated_stop(self, member) -> bool:
        """Count a stop request from ``member`` (None: the coordinator's own signal or the
        external port); True when that one asked before."""
        self._stop_requests[member] = self._stop_requests.get(member, 0) + 1
        return self._stop_requests[member] > 1

    async def _probe(self) -> tuple:
        """((sent, taken) over the cluster when every worker's input is done and the two are
        equal, else None; and the records taken so far, to tell whether anything moves)."""
        replies = await self._ask_all({"type": "probe"})
        taken = sum(r["received"] for r in replies if r is not None)
        if any(r is None or not r.get("input_done") for r in replies):
            return None, taken
        sent = sum(r["sent"] for r in replies)
        return ((sent, taken) if sent == taken else None), taken

    async def _ask_all(self, message: dict) -> list[dict | None]:
        loop = asyncio.get_running_loop()
        request = next(self._ids)
        futures = []
        for member in self.members:
            future = loop.create_future()
            if member.lost or member.done is not None:
                future.set_result(None)
            else:
                member.answers[request] = future
                member.send({**message, "id": request})
            futures.append(future)
        try:
            done, _ = await asyncio.wait(futures, timeout=ANSWER_TIMEOUT)
        finally:
            for member in self.members:
                member.answers.pop(request, None)
        return [f.result() if f in done and not f.cancelled() else None for f in futures]

    async def _link_lost(self, member: MemberHandle, peer_name: str) -> None:
        """A link between two workers broke: blame the peer if it went away (its control
        connection closes too, usually a moment later), else the link itself."""
        peer = next((m for m in self.members if m.name == peer_name), None)
        deadline = asyncio.get_running_loop().time() + LINK_LOSS_GRACE
        while peer is not None and not peer.lost and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if peer is not None and peer.lost:
            await self._member_failed(peer, {})
        else:
            await self._member_failed(member, {"error": f"its link to worker {peer_name} broke"})

    async def _member_failed(self, member: MemberHandle, message: dict) -> None:
        if message.get("error"):
            why = f"worker {member.name} failed: {message['error']}"
        else:
            why = f"worker {member.name} went away ({await self.describe_loss(member.index)})"
            if self.rounds is not None and self.started:
                self._roll_back(why)
                return
        log.error("%s; stopping the other workers", why)
        self._abort(why)

    def _abort(self, why: str) -> None:
        self.failure = why
        if self.rounds is not None:
            self.rounds.stop()
        self._broadcast({"type": "abort", "why": why})

    def round_timed_out(self, checkpoint_id: int, late: list[str]) -> None:
        """A checkpoint round got no answer from ``late`` in time: like a failed checkpoint,
        the cluster goes back to the last complete one."""
        self._events.put_nowait(("checkpoint_failed", None, {
            "id": checkpoint_id, "error": f"no answer from {', '.join(late)} within "
                                          f"{ROUND_TIMEOUT:.0f} s"}))

    def _roll_back(self, why: str) -> None:
        """Send every worker back to the last complete checkpoint: they stop at once, and
        are restarted (by the supervisor, or the operator) to restore it."""
        self.rollback = why
        self.rounds.stop()
        log.error("%s; every worker goes back to checkpoint %s", why,
                  self.rounds.last_complete if self.rounds.last_complete is not None
                  else "none (the start of input)")
        self._broadcast({"type": "rollback", "why": why})

    async def _wait_done(self) -> None:
        """Wait for every worker's summary: each flushes its sinks for up to --flush-timeout;
        one that takes much longer is given up on (the run fails)."""
        # after a rollback the workers are restarted anyway: wait only for a prompt goodbye
        grace = ROLLBACK_GRACE if self.rollback else self.flush_timeout + FINISH_GRACE
        deadline = asyncio.get_running_loop().time() + grace
        while not all(m.done is not None or m.lost for m in self.members):
            left = deadline - asyncio.get_running_loop().time()
            try:
                kind, member, message = await asyncio.wait_for(self._events.get(), max(left, 0))
            except asyncio.TimeoutError:
                if not self.rollback:
                    late = [m.name for m in self.members if m.done is None and not m.lost]
                    self.failure = self.failure or f"worker(s) {', '.join(late)} did not finish"
                    log.error("%s within %g s of the end", self.failure, grace)
                return
            if kind in ("lost", "failed") and self.failure is None and not self.rollback:
                # while finishing too: a worker that dies before it has flushed loses output
                await self._member_failed(member, message)
            elif kind == "stop_requested" and self._repeated_stop(member):
                self._broadcast({"type": "abandon"})
            elif kind == "checkpoint_failed" and self.failure is None and not self.rollback:
                # the last commit failed (a disk error): the run fails, its checkpoints stay
                self.failure = f"checkpoint {message.get('id')} failed: {message.get('error')}"
                log.error("%s; the last complete checkpoint is kept", self.failure)

    def _take_report(self, member: MemberHandle, report) -> None:
        """Hand a worker's metrics report to the hub; one the hub cannot take is logged and
        dropped (metrics must never stop the run)."""
        if self.metrics is None:
            return
        try:
            self.metrics.update({**report, "worker": member.name})
        except Exception as exc:
            log.warning("metrics: dropped a report of worker %s: %s: %s", member.name,
                        type(exc).__name__, exc)

    def _broadcast(self, message: dict) -> None:
        for member in self.members:
            member.send(message)

    async def _listen(self, member: MemberHandle) -> None:
        while True:
            try:
                message = await read_message(member.reader)
            except (WireError, OSError) as exc:
                log.error("control connection of worker %s broke: %s", member.name, exc)
                message = None
            if message is None:
                if member.done is None:
                    member.lost = True
                    for future in member.answers.values():
                        if not future.done():
                            future.set_result(None)
                    if self.rounds is not None:   # a round waiting for it ends, failed
                        self.rounds.lost(member)
                    self._events.put_nowait(("lost", member, {}))
                return
            kind = message.get("type")
            if kind == "metrics":
                self._take_report(member, message.get("report"))
                continue
            if kind in ("checkpointed", "committed", "checkpoint_failed") and self.rounds:
                if self.rounds.answer(member, message):
                    continue
            if kind in ("status", "reply"):
                future = member.answers.get(message.get("id"))
                if future is not None and not future.done():
                    future.set_result(message)
            elif kind == "ready":
                member.ready = message
                self._events.put_nowait(("ready", member, message))
            elif kind == "done":
                member.done = message.get("result") or {}
                self._events.put_nowait(("done", member, message))
            else:
                self._events.put_nowait((kind, member, message))


async def _connection_closed(index: int) -> str:
    return "its control connection closed"
