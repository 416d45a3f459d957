"""One worker of a run with several: its Worker, its links to the other workers, and its side
of the control connection to the coordinator.

The steps of a member's life, each driven by the coordinator:

1. open its sinks, then its links to every other worker (``connect_links``);
2. say ``ready``; on ``start``, open its sources and say ``started``;
3. answer ``probe`` (is my input done, how many records did I send and take) and ``query``
   (keys per state computation); tell the coordinator when its input is done, when it was
   asked to stop (a signal) and when a stage failed;
4. on ``stop``, stop its sources (the end of input fires the windows); on ``finish`` (every
   worker's input is done and nothing is in flight), flush and close its sinks, say ``done``
   with what it did, and end; on ``abort`` (another worker failed), stop at once.

Example::

    >>> Member.__doc__.splitlines()[0]
    'A worker that runs as one of several (see the module docstring).'
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time

from wallaroo.cluster.barriers import BarrierAlignment, decode_marker
from wallaroo.cluster.exchange import Counters, Direct, Exchange, WatermarkAligner, decode_record
from wallaroo.cluster.wire import WireError, read_message, send_soon
from wallaroo.runtime.checkpoint_store import CheckpointStore, ResilienceDirError
from wallaroo.runtime.checkpointing import Checkpointer
from wallaroo.runtime.metering import Reporter, WorkerMeter
from wallaroo.runtime.report import result_summary
from wallaroo.errors import RunStopped
from wallaroo.runtime.placement import Placement
from wallaroo.runtime.worker import RunResult, StartupError, Worker

log = logging.getLogger("wallaroo")


class ClusterStopped(RunStopped):
    """The run was stopped because of another worker (it failed, or it or the coordinator
    went away).

    Example::

        >>> stopped = ClusterStopped("the coordinator closed the control connection")
        >>> isinstance(stopped, RunStopped), str(stopped)
        (True, 'the coordinator closed the control connection')
    """


class Member:
    """A worker that runs as one of several (see the module docstring).

    ``control`` is the (reader, writer) pair of the control connection; ``serializer`` the
    app module's (serialize, deserialize), or None.

    Example (two workers and their coordinator on one loop: control connections over socket
    pairs, links that deliver on the loop's next turn; worker 0 reads the source, each
    worker counts the words whose key groups it owns and writes its own part file)::

        >>> import os, pathlib, socket, tempfile, wallaroo
        >>> from wallaroo.cluster.coordinator import Coordinator, MemberHandle
        >>> from wallaroo.runtime.worker import RunOptions
        >>> @wallaroo.state_computation(name="count", state=dict)
        ... def count(word, seen):
        ...     seen[word] = seen.get(word, 0) + 1
        ...     return f"{word} {seen[word]}"
        >>> out = os.path.join(tempfile.mkdtemp(), "counts.txt")
        >>> app = wallaroo.build_application("wc", wallaroo.source(
        ...     "words", wallaroo.IterSourceConfig("words", "a b a c b a".split()))
        ...     .key_by(lambda word: word).to(count)
        ...     .to_sink(wallaroo.FileSinkConfig(out, wallaroo.encoder(lambda s: s + "\\n"))))
        >>> class Link:
        ...     def __init__(self, to, me): self.to, self.me = to, me
        ...     def send(self, record):
        ...         asyncio.get_running_loop().call_soon(self.to.deliver, record, self.me)
        ...     def close(self): pass
        >>> async def two_workers():
        ...     handles, members = [], []
        ...     for i in range(2):
        ...         ours, theirs = socket.socketpair()
        ...         coordinator_side = await asyncio.open_connection(sock=ours)
        ...         handles.append(MemberHandle(f"w{i}", i, *coordinator_side))
        ...         control = await asyncio.open_connection(sock=theirs)
        ...         members.append(Member(app, RunOptions(), {}, {}, Placement(i, 2, f"w{i}"),
        ...                               control))
        ...     async def connect_links(member):
        ...         me = member.placement.index
        ...         member.links[1 - me] = Link(members[1 - me], me)
        ...     results = await asyncio.gather(Coordinator(handles, Placement().key_groups).run(),
        ...                                    *(m.run(connect_links) for m in members))
        ...     return [s["ingested"] for s in results[0]], [r.exit_code for r in results[1:]]
        >>> asyncio.run(two_workers())
        ([6, 0], [0, 0])
        >>> for part in ("part-0", "part-1"):
        ...     print(part, pathlib.Path(f"{out}.{part}").read_text().splitlines())
        part-0 ['b 1', 'c 1', 'b 2']
        part-1 ['a 1', 'a 2', 'a 3']
    """

    def __init__(self, app, options, source_configs: dict, sink_configs: dict,
                 placement: Placement, control: tuple, serializer=None):
        self.placement = placement
        self.reader, self.writer = control
        self.serialize, self.deserialize = serializer or (None, None)
        self.counters = Counters()
        self.table = placement.routing_table()
        #: The link to each other worker (``send(record)``), by index; None for this one.
        self.links: list = [None] * placement.count
        self._targets: dict[int, object] = {}
        # one worker alone needs no exchange: its chains hand batches straight on
        self.worker = Worker(app, options, source_configs, sink_configs, placement,
                             exchange=self._exchange if placement.count > 1 else None)
        self.worker.on_input_done = lambda: self.tell({"type": "input_done"})
        self.worker.on_failed = self._failed
        self.worker.on_stop_requested = lambda: self.tell({"type": "stop_requested"})
        self.stopped_by: str | None = None
        self._finish = asyncio.Event()
        #: With resilience on: this worker's checkpoints, and the alignment of their barriers.
        self.checkpointer = None
        if options.resilient:
            store = CheckpointStore(options.resilience_dir, app.name, placement.name)
            self.checkpointer = Checkpointer(self.worker, store)
        self.alignment = BarrierAlignment(placement.index, placement.count,
                                          self.worker.plan.exchange_depth(), self._send_marker,
                                          self._aligned)
        #: Records that arrive before this worker has restored its checkpoint, and records
        #: of after a barrier that wait for its snapshot: (record, sender), in order.
        self._restored = self.checkpointer is None
        self._waiting: list[tuple[bytes, int]] = []
        #: Set when the coordinator rolls the cluster back: this worker must restart.
        self.rolled_back = False
        #: Set when the control connection broke (the coordinator's process died).
        self.coordinator_lost = False

    def _exchange(self, edge, target) -> Exchange:
        if getattr(target, "sees_watermarks", False):
            head = edge.target.nodes[0]
            receiver = WatermarkAligner(target, lambda origin: self._senders_of(origin, head))
        else:
            receiver = Direct(target)
        self._targets[edge.id] = receiver
        return Exchange(edge.id, receiver, self.table, self.placement.index, self.links,
                        self.counters, self.serialize)

    @functools.lru_cache(maxsize=None)
    def _senders_of(self, origin: int, head) -> tuple[int, ...]:
        """The workers through which an origin's batches reach the exchange into ``head``:
        every worker when an earlier exchange spread them, else the one it runs on."""
        count = self.placement.count
        plan = self.worker.plan
        upstream = plan.graph.nodes[origin // count]
        if plan.routed_between(upstream, head, False):
            return tuple(range(count))
        return (origin % count,)

    def deliver(self, record, sender: int) -> None:
        """Run a record another worker sent through the chain its exchange leads to. Once the
        run is over for this worker (its sinks close), records still arriving are dropped:
        after a clean end none can be in flight, and after an abort the run has failed.
        Barrier markers go to the alignment; records that must wait (before the restore,
        after a barrier) wait in order."""
        if self._finish.is_set():
            return
        marker = decode_marker(record)
        if marker is not None:
            self.alignment.on_marker(sender, *marker)
        elif not self._restored or self.alignment.holds(sender):
            self._waiting.append((record, sender))
        else:
            self._run_record(record, sender)

    def _run_record(self, record, sender: int) -> None:
        started = time.monotonic_ns()
        try:
            exchange_id, batch = decode_record(record, self.deserialize)
            self.counters.messages_received += len(batch.values)
            self._targets[exchange_id].push_from(sender, batch)
        except Exception as exc:  # user errors are handled in the ops: this is the engine's
            self.worker.crash(exc)
        else:
            self.worker.passed(started, len(batch.values))
        self.counters.received += 1

    def _run_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for record, sender in waiting:
            self.deliver(record, sender)

    # -- checkpoints ------------------------------------------------------------------------

    def _send_marker(self, peer: int, record: bytes) -> None:
        self.links[peer].send(record)

    def _begin_checkpoint(self, checkpoint_id: int) -> None:
        self.checkpointer.begin(checkpoint_id)
        self.alignment.begin(checkpoint_id)

    def _aligned(self) -> None:
        checkpoint_id = self.alignment.checkpoint_id
        asyncio.get_running_loop().create_task(self._complete_checkpoint(checkpoint_id))

    async def _complete_checkpoint(self, checkpoint_id: int) -> None:
        """Snapshot, let input flow again, write the snapshot, and tell the coordinator."""
        checkpointer = self.checkpointer
        try:
            writing, info = await checkpointer.take(checkpoint_id)
        except Exception as exc:   # a sink voted against it, or could not be reached
            writing, why = None, f"{type(exc).__name__}: {exc}"
        checkpointer.release()
        self.alignment.finish()
        self._run_waiting()
        if writing is None:
            self.tell({"type": "checkpoint_failed", "id": checkpoint_id, "error": why})
            return
        try:
            info["bytes"] = await writing.result()
        except ResilienceDirError as exc:
            self.tell({"type": "checkpoint_failed", "id": checkpoint_id,
                       "error": exc.strerror or str(exc), "fatal": True})
            return
        except OSError as exc:
            self.tell({"type": "checkpoint_failed", "id": checkpoint_id, "error": str(exc)})
            return
        self.tell({"type": "checkpointed", "id": checkpoint_id, **info})

    async def _restore(self, checkpoint_id: int | None) -> None:
        """Load the checkpoint the coordinator chose (None: start afresh), then run what
        other workers sent meanwhile."""
        info = await self.checkpointer.restore(checkpoint_id)
        if checkpoint_id is not None:
            log.info("restored checkpoint %d: %d keys, %d bytes in %.0f ms", checkpoint_id,
                     info["keys"], info["bytes"], info["seconds"] * 1000)
        self._restored = True
        self._run_waiting()

    def link_lost(self, peer: str) -> None:
        """The link to ``peer`` broke: records may be lost, so the coordinator must decide (it
        ignores this once the run is finishing, when workers exit one by one)."""
        if not self._finish.is_set():
            self.tell({"type": "link_lost", "peer": peer})

    def tell(self, message: dict) -> None:
        """Send a control message to the coordinator (it is small: no need to wait)."""
        send_soon(self.writer, message)

    async def run(self, connect_links, on_started=None) -> RunResult:
        """Take part in the run until the coordinator ends it; the worker's result.
        ``connect_links(member)`` fills ``links`` and starts taking records from them;
        ``on_started(worker)`` is called once the sources are open."""
        worker = self.worker
        survey = None
        if self.checkpointer is not None:
            try:
                self.checkpointer.store.open()
            except ResilienceDirError as exc:
                raise StartupError(str(exc)) from None
            survey = self.checkpointer.survey()
        await worker.open_sinks()
        try:
            await connect_links(self)
            self.tell({"type": "ready", "describe": worker.describe(), "checkpoints": survey})
            message = await self._next()
            if message.get("type") != "start":
                raise ClusterStopped(message.get("why") or "the coordinator stopped the run")
            if self.checkpointer is not None:
                await self._restore(message.get("restore"))
            await worker.open_sources()
            self.tell({"type": "started"})
        except BaseException:
            await worker.stop_input(fire_windows=False)
            await worker.finish_output()
            raise
        if on_started is not None:
            on_started(worker)
        reporter = None
        if worker.options.metrics:
            reporter = Reporter(WorkerMeter(worker, self.counters),
                                lambda report: self.tell({"type": "metrics", "report": report}),
                                worker.options.quiet)
            reporter.start()
        control = asyncio.get_running_loop().create_task(self._serve_control())
        control.add_done_callback(self._control_ended)
        await self._finish.wait()
        for link in self.links:
            if link is not None:
                link.close()
        await worker.finish_output()
        if reporter is not None:
            reporter.stop()
        result = worker.result()
        if self.stopped_by is not None and result.failure is None:
            result.failure = ClusterStopped(self.stopped_by)
        self.tell({"type": "done", "result": result_summary(result, worker)})
        try:
            await asyncio.wait_for(control, timeout=5.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            control.cancel()
        self.writer.close()
        return result

    def _control_ended(self, task: asyncio.Task) -> None:
        """The control loop must not die quietly: an engine fault in it fails this worker."""
        if not task.cancelled() and task.exception() is not None:
            self.worker.crash(task.exception())
            self._finish.set()

    async def _next(self) -> dict:
        try:
            message = await read_message(self.reader)
        except (WireError, OSError) as exc:
            self.coordinator_lost = not self._finish.is_set()
            raise ClusterStopped(f"the control connection broke: {exc}") from None
        if message is None:
            self.coordinator_lost = not self._finish.is_set()
            raise ClusterStopped("the coordinator closed the control connection")
        return message

    def _failed(self, failure: BaseException) -> None:
        """Tell the coordinator a stage failed here (even during a stop): it stops them all."""
        self.tell({"type": "failed", "error": f"{type(failure).__name__}: {failure}"})

    async def _serve_control(self) -> None:
        worker = self.worker
        while True:
            try:
                message = await self._next()
            except ClusterStopped as exc:
                if not self._finish.is_set():
                    log.error("%s: stopping", exc)
                    self.stopped_by = str(exc)
                    await worker.stop_input(fire_windows=False)
                    self._finish.set()
                return
            kind = message.get("type")
            if kind == "probe":
                self.tell({"type": "status", "id": message.get("id"),
                           "input_done": worker.input_done or worker.stopping,
                           **self.counters.snapshot()})
            elif kind == "query":
                self.tell({"type": "reply", "id": message.get("id"),
                           "data": {"state": worker.state_counts(), "ingested": worker.ingested,
                                    "pid": os.getpid()}})
            elif kind == "stop":
                await worker.stop_input()
            elif kind == "abort":
                self.stopped_by = message.get("why") or "another worker failed"
                if worker.failure is not None:
                    self.stopped_by = None
                await worker.stop_input(fire_windows=False)
                self._finish.set()
            elif kind == "finish":   # with "why", the run ended without all of its messages
                if message.get("why") and worker.failure is None:
                    self.stopped_by = message["why"]
                self._finish.set()
            elif kind == "abandon":  # a second stop request: do not wait for sinks
                worker.abandon_flush("the cluster is stopping without waiting")
            elif kind == "checkpoint":
                self._begin_checkpoint(message["id"])
            elif kind == "commit":
                try:
                    await self.checkpointer.commit(message["id"])
                except OSError as exc:
                    self.tell({"type": "checkpoint_failed", "id": message["id"],
                               "error": str(exc), "fatal": True})
                else:
                    self.tell({"type": "committed", "id": message["id"]})
            elif kind == "clear":   # every worker has finished cleanly: nothing to recover
                self.checkpointer.store.clear()
            elif kind == "rollback":   # the cluster goes back to its last checkpoint
                self.rolled_back = True
                self.stopped_by = message.get("why") or "the cluster rolls back"
                for source in worker.sources:
                    source.announce_restart()
                worker.abandon_flush("rolling back to the last checkpoint")
                await worker.stop_input(fire_windows=False)
                self._finish.set()
