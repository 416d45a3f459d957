"""``wallaroo-run --workers N``: N worker processes on this machine, under a supervisor.

The supervisor (the ``wallaroo-run`` process itself) makes, before it starts any worker:

- a shared-memory ring (with its two eventfds) for each ordered pair of workers: the records
  worker i sends to worker j go through ring (i, j), with no system call while both are busy;
- a control connection (a socket pair) to each worker;
- for each TCP source on port 0, a port picked once (a socket bound with SO_REUSEPORT, held
  until every worker listens), so that every worker accepts on the same address.

It then starts the workers: each is ``wallaroo-run`` again, with the same command line and
``WALLAROO_LOCAL_WORKER`` (its index, the fds it inherits) in its environment. The supervisor
runs the coordinator (wallaroo.cluster.coordinator), prints the startup line once every worker
is ready, passes SIGTERM/SIGINT on as a clean stop, and reports a worker that dies.

Example::

    >>> bootstrap = LocalBootstrap(index=1, count=2, control_fd=5, rings_out={0: [6, 7, 8]},
    ...                            rings_in={0: [9, 10, 11]}, source_ports={"text": 7000})
    >>> LocalBootstrap.from_env({ENV: bootstrap.to_env()}) == bootstrap
    True
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import resource
import signal
import socket
import sys
from dataclasses import asdict, dataclass, field

from wallaroo.cluster.coordinator import Coordinator, MemberHandle
from wallaroo.cluster.exchange import RingIntake, RingLink
from wallaroo.cluster.external import ExternalServer
from wallaroo.cluster.formation import ClusterControl
from wallaroo.runtime.rings import Ring, RingReader, RingWriter, make_ring_pair

log = logging.getLogger("wallaroo")

#: The environment variable that makes ``wallaroo-run`` a local worker of a supervisor.
ENV = "WALLAROO_LOCAL_WORKER"
#: Bytes of each ring between two local workers (one per direction).
RING_BYTES = 4 * 1024 * 1024


@dataclass
class LocalBootstrap:
    """What a local worker is told by its supervisor: its index of ``count``, the fd of its
    control connection, the (ring, data eventfd, space eventfd) fds of the ring to (out) and
    from (in) each other worker, and the port each port-0 TCP source listens on.

    It reaches the worker as JSON in the ``WALLAROO_LOCAL_WORKER`` environment variable.

    Example::

        >>> bootstrap = LocalBootstrap(index=0, count=2, control_fd=5, rings_out={1: [6, 7, 8]})
        >>> LocalBootstrap.from_env({ENV: bootstrap.to_env()}).rings_out
        {1: [6, 7, 8]}
        >>> LocalBootstrap.from_env({}) is None           # not a local worker
        True
    """

    index: int
    count: int
    control_fd: int
    rings_out: dict = field(default_factory=dict)
    rings_in: dict = field(default_factory=dict)
    source_ports: dict = field(default_factory=dict)

    def to_env(self) -> str:
        """This bootstrap as the value of the ``ENV`` environment variable."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ=None) -> "LocalBootstrap | None":
        """The bootstrap in ``environ`` (``os.environ`` by default), or None when this process
        is not a local worker."""
        raw = (environ if environ is not None else os.environ).get(ENV)
        if not raw:
            return None
        data = json.loads(raw)
        data["rings_out"] = {int(k): v for k, v in data["rings_out"].items()}
        data["rings_in"] = {int(k): v for k, v in data["rings_in"].items()}
        return cls(**data)


def worker_name(index: int) -> str:
    """The name of local worker ``index`` (in logs, status and partitions).

    Example::

        >>> worker_name(0)
        'worker-0'
    """
    return f"worker-{index}"


class SupervisorError(Exception):
    """The supervisor cannot start the workers; the message says why and what to do.

    Example::

        >>> with socket.socket() as busy:
        ...     busy.bind(("127.0.0.1", 0)); busy.listen()
        ...     reserve_ports({"in": busy.getsockname()})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        wallaroo.cluster.supervisor.SupervisorError: source 'in' cannot listen on 127.0.0.1:...
    """


def reserve_ports(tcp_sources: dict) -> tuple[dict, list]:
    """Make sure every TCP source (name -> (host, port)) can be shared by the local workers,
    and nobody else: a fixed port must be free (a plain bind proves nothing else listens on
    it, SO_REUSEPORT or not); a port 0 becomes one port for all, held by a socket bound with
    SO_REUSEPORT until the workers listen. Returns (name -> chosen port, held sockets).

    Example::

        >>> ports, held = reserve_ports({"in": ("127.0.0.1", 0)})
        >>> ports["in"] == held[0].getsockname()[1]
        True
        >>> held[0].close()
    """
    ports, held = {}, []
    for name, (host, port) in tcp_sources.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if port == 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            else:   # free of listeners, though maybe in TIME_WAIT from an earlier run
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            if port != 0:
                sock.listen(1)
        except OSError as exc:
            sock.close()
            for other in held:
                other.close()
            raise SupervisorError(f"source {name!r} cannot listen on {host}:{port}: "
                                  f"{exc.strerror or exc}; pick a free port (0 picks one)") from None
        if port == 0:
            ports[name] = sock.getsockname()[1]
            held.append(sock)
        else:
            sock.close()
    return ports, held


def ring_bytes(count: int) -> int:
    """Bytes of each ring between two of ``count`` local workers: 4 MiB up to 9 workers, then
    less, so that the rings of a worker (2 per other worker) stay within 64 MiB.

    Example::

        >>> ring_bytes(2) >> 20, ring_bytes(32) >> 20
        (4, 1)
    """
    return max(1 << 20, min(RING_BYTES, (64 << 20) // (2 * max(1, count - 1))))


def raise_fd_limit(count: int) -> None:
    """The supervisor holds 3 fds per ring (the ring, two eventfds) for count x (count - 1)
    rings while it starts the workers: raise the soft limit of open files if that needs it,
    or raise SupervisorError (saying how many files the workers need) when the hard limit
    is too low.

    Example::

        >>> raise_fd_limit(2)                             # 2 workers: about 74 open files
        >>> resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 74
        True
    """
    needed = 3 * count * (count - 1) + 2 * count + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SupervisorError(f"{count} local workers need about {needed} open files, and this "
                              f"process may open {hard} (ulimit -n); raise the limit or run "
                              f"fewer workers")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Supervisor:
    """Starts ``count`` local workers running ``argv`` and coordinates them; ``run()``
    returns the exit code and each worker's summary.

    ``tcp_sources`` maps each TCP source's name to its (host, port); ``announce(members)``
    prints the startup line once every worker is ready; ``external`` is the external control
    port's (host, port), if any. With ``checkpoint_interval`` (resilience on), a worker that
    dies makes the supervisor stop the others and start every worker again: they restore the
    last complete checkpoint and go on.

    Example: ``code, summaries = await Supervisor(argv, 4, key_groups, {}, announce).run()``
    (as wallaroo.cluster.launch.supervise does).
    """

    #: Restarts in a row, each without a checkpoint completed since the one before, after
    #: which the supervisor gives up (the workers die as soon as they start).
    MAX_FRUITLESS_RESTARTS = 10

    def __init__(self, argv: list[str], count: int, key_groups: int, tcp_sources: dict,
                 announce, external: tuple[str, int] | None = None, secret: str | None = None,
                 flush_timeout: float = 30.0, checkpoint_interval: float | None = None,
                 metrics=None):
        #: The metrics hub the workers report to (wallaroo.metrics.hub), if any.
        self.metrics = metrics
        self.flush_timeout = flush_timeout
        self.checkpoint_interval = checkpoint_interval
        self.external = external
        self.secret = secret
        self.argv = argv
        self.count = count
        self.key_groups = key_groups
        self.tcp_sources = tcp_sources
        self.announce = announce
        self.processes: list[asyncio.subprocess.Process] = []
        #: Times the workers were started again after one died.
        self.restarts = 0
        self._coordinator: Coordinator | None = None

    async def run(self) -> tuple[int, list]:
        """Make the rings and control connections, start the workers, coordinate them until
        the run ends (SIGTERM or SIGINT stops it cleanly), and wait for them to exit. The exit
        code (the highest of the workers', at least 1 if the run failed) and each worker's
        summary (None for one that went away); SupervisorError if they cannot start."""
        loop = asyncio.get_running_loop()
        raise_fd_limit(self.count)
        control = ClusterControl()
        external = None
        if self.external is not None:   # before any worker starts: a busy port stops it all
            external = ExternalServer(control, *self.external, secret=self.secret)
            try:
                await external.start()
            except OSError as exc:
                raise SupervisorError(exc.strerror) from None
        ports, held = reserve_ports(self.tcp_sources)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: self._coordinator.request_stop())
        fruitless = 0
        try:
            while True:
                coordinator = await self._start_workers(ports, held)
                control.coordinator = coordinator
                summaries = await coordinator.run()
                codes = await asyncio.gather(*(self._reap(p, coordinator.rollback is not None)
                                               for p in self.processes))
                if coordinator.rollback is None:
                    break
                fruitless = 0 if coordinator.rounds.summary()["completed"] else fruitless + 1
                if fruitless >= self.MAX_FRUITLESS_RESTARTS:
                    log.error("giving up: the workers were restarted %d times in a row without "
                              "completing a checkpoint", fruitless)
                    return 1, summaries
                self.restarts += 1
                if self.metrics is not None:
                    self.metrics.workers_restarted()
                log.warning("restarting the %d workers (restart %d)", self.count, self.restarts)
        finally:
            if external is not None:
                await external.close()
            for sock in held:
                sock.close()
        code = max((1 if c < 0 else c for c in codes), default=0)   # < 0: killed by a signal
        if coordinator.failure is not None:
            code = max(code, 1)
        return code, summaries

    def checkpoint_summary(self) -> dict:
        """Checkpoints of the last start of the workers (see CheckpointRounds.summary)."""
        rounds = self._coordinator.rounds if self._coordinator is not None else None
        return rounds.summary() if rounds is not None else {"completed": 0}

    async def _start_workers(self, ports: dict, held: list) -> Coordinator:
        """Make the rings and control connections and start every worker; their
        coordinator."""
        rings = {}   # (i, j) -> (ring, data_fd, space_fd): what worker i sends worker j
        size = ring_bytes(self.count)
        for i in range(self.count):
            for j in range(self.count):
                if i != j:
                    rings[(i, j)] = make_ring_pair(size)
        members = []
        self.processes = []
        for index in range(self.count):
            ours, theirs = socket.socketpair()
            bootstrap = LocalBootstrap(
                index, self.count, theirs.fileno(),
                rings_out={j: _fds(rings[(index, j)]) for j in range(self.count) if j != index},
                rings_in={i: _fds(rings[(i, index)]) for i in range(self.count) if i != index},
                source_ports=ports)
            inherited = [theirs.fileno(), *(fd for fds in bootstrap.rings_out.values() for fd in fds),
                         *(fd for fds in bootstrap.rings_in.values() for fd in fds)]
            process = await asyncio.create_subprocess_exec(
                *wallaroo_run_command(self.argv),
                env={**os.environ, ENV: bootstrap.to_env()}, pass_fds=inherited)
            theirs.close()
            self.processes.append(process)
            reader, writer = await asyncio.open_connection(sock=ours)
            members.append(MemberHandle(worker_name(index), index, reader, writer, process.pid))
        for ring, data_fd, space_fd in rings.values():   # the workers hold their own copies
            ring.close()
            os.close(data_fd)
            os.close(space_fd)
        first = self.restarts == 0

        def ready(handles) -> None:
            for sock in held:
                sock.close()
            held.clear()
            if first:
                self.announce(handles)
            else:
                log.warning("recovered: %d workers running again (pids %s)", len(handles),
                            ", ".join(str(m.pid) for m in handles))

        self._coordinator = Coordinator(members, self.key_groups, self._describe_loss, ready,
                                        self.flush_timeout, self.checkpoint_interval,
                                        self.metrics)
        return self._coordinator

    async def _reap(self, process, at_once: bool = False) -> int:
        """The exit code of a worker; ``at_once`` (rolling back) kills what still runs after
        a moment to tell its senders to reconnect."""
        try:
            return await asyncio.wait_for(process.wait(), timeout=0.5 if at_once else 15.0)
        except asyncio.TimeoutError:
            if not at_once:
                log.error("worker (pid %d) did not exit; killing it", process.pid)
            process.kill()
            await process.wait()
            return 1

    async def _describe_loss(self, index: int) -> str:
        process = self.processes[index]
        try:   # its control connection closed: its exit status follows shortly
            await asyncio.wait_for(process.wait(), timeout=2.0)
        except asyncio.TimeoutError:
            pass
        code = process.returncode
        if code is None:
            return f"pid {process.pid}: its control connection closed"
        if code < 0:
            return f"pid {process.pid} was killed by {signal.Signals(-code).name}"
        return f"pid {process.pid} exited with code {code}"


# How a worker starts: wallaroo-run's own entry point, with the supervisor's command line.
_CHILD = "import sys; from wallaroo.cli import run_main; run_main(sys.argv[1:])"


def wallaroo_run_command(argv: list[str]) -> list[str]:
    """The command that runs ``wallaroo-run`` with ``argv`` on this Python (how the
    supervisor starts its workers, and how a cluster worker restarts itself).

    Example::

        >>> wallaroo_run_command(["--app", "wc"])[-2:]
        ['--app', 'wc']
    """
    return [sys.executable, "-c", _CHILD, *argv]


def _fds(triple) -> list[int]:
    ring, data_fd, space_fd = triple
    return [ring.fd, data_fd, space_fd]


async def connect_rings(member, bootstrap: LocalBootstrap) -> None:
    """Attach a local worker to its rings: a RingLink to each other worker, and a RingIntake
    taking what each sends it.

    Example: ``result = await member.run(lambda m: connect_rings(m, bootstrap))`` (as
    wallaroo.cluster.launch.run_local_member does).
    """
    worker = member.worker
    for peer, (ring_fd, data_fd, space_fd) in bootstrap.rings_out.items():
        writer = RingWriter(Ring.attach(ring_fd), data_fd, space_fd)
        member.links[peer] = RingLink(writer, worker.flow, worker_name(peer))
    for peer, (ring_fd, data_fd, space_fd) in bootstrap.rings_in.items():
        ring = Ring.attach(ring_fd)
        intake = RingIntake(
            lambda deliver, ring=ring, d=data_fd, s=space_fd: RingReader(ring, d, s, deliver),
            functools.partial(member.deliver, sender=peer), worker.intake)
        intake.start()


async def control_connection(fd: int) -> tuple:
    """The (reader, writer) of the control connection a supervisor passed as ``fd``.

    Example::

        >>> async def over_a_socket_pair():
        ...     supervisor_end, worker_end = socket.socketpair()
        ...     reader, writer = await control_connection(worker_end.detach())
        ...     supervisor_end.sendall(b"hello\\n")
        ...     line = await reader.readline()
        ...     writer.close(); supervisor_end.close()
        ...     return line
        >>> asyncio.run(over_a_socket_pair())
        b'hello\\n'
    """
    sock = socket.socket(fileno=fd)
    return await asyncio.open_connection(sock=sock)
