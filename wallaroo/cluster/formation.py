"""A cluster over TCP, formed with the original Wallaroo flags; workers may be on many hosts.

On the first worker::

    wallaroo-run --app wc --cluster-initializer --worker-count 3 \\
        --control 10.0.0.1:6000 --data 10.0.0.1:6001 --name initializer [--external 10.0.0.1:5050]

On each other worker (same app, same command line otherwise)::

    wallaroo-run --app wc --control 10.0.0.1:6000 --name w1 [--my-data 10.0.0.2:6001]

The phases, each logged:

1. **Connected.** Every worker (the initializer too) listens on its data address and connects
   to the initializer's control address, proving the cluster secret when there is one. A
   worker that cannot reach the initializer retries every half second for ``--join-timeout``
   seconds (default 30), then exits saying what it tried.
2. **Topology received.** Once ``--worker-count`` workers have joined, the initializer gives
   each its index (the initializer is 0, the others in the order of their names, so that a
   worker restarted with the same command line gets the same index, key groups and files),
   the names and data addresses of all, and the number of key groups.
3. **Ready.** Each worker opens one TCP connection to each worker after it (proving the secret
   again); records go both ways over it. When every worker is linked to every other, the
   coordinator (on the initializer) starts them all, and the cluster runs as
   wallaroo.cluster.coordinator describes.

Each worker keeps a small run file (``<dir>/<app>-<name>.worker.json``: pid, addresses,
index) while it runs, in ``--resilience-dir`` or the system's temporary folder; a clean stop
removes it.

Example::

    >>> parse_address("--control", "127.0.0.1:6000")
    ('127.0.0.1', 6000)
    >>> parse_address("--control", "6000")
    Traceback (most recent call last):
    ...
    ValueError: --control '6000': give HOST:PORT, such as 127.0.0.1:6000
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import stat
import tempfile
import time
from dataclasses import dataclass

from wallaroo.cluster.auth import AuthError, client_handshake, peer_name, server_handshake
from wallaroo.cluster.coordinator import Coordinator, MemberHandle
from wallaroo.cluster.exchange import TcpLink
from wallaroo.cluster.wire import WireError, encode_message, read_message

log = logging.getLogger("wallaroo")

#: The name the initializer always has (as in the original Wallaroo).
INITIALIZER = "initializer"
#: Seconds between attempts to reach the initializer.
RETRY_INTERVAL = 0.5


class FormationError(Exception):
    """The cluster could not be formed; the message says what was tried and what to check.

    Example::

        >>> async def initializer_went_away():
        ...     reader = asyncio.StreamReader()
        ...     reader.feed_eof()
        ...     await receive_topology(reader, ClusterSpec("w1", ("127.0.0.1", 6000)))
        >>> try:
        ...     asyncio.run(initializer_went_away())
        ... except FormationError as exc:
        ...     print(exc)
        the initializer closed the connection before sending the topology
    """


def parse_address(flag: str, value: str) -> tuple[str, int]:
    """(host, port) of a ``HOST:PORT`` flag value (``[v6]:port`` works too); ValueError,
    naming ``flag``, if it is not one.

    Example::

        >>> parse_address("--data", "[::1]:6001")
        ('::1', 6001)
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag} {value!r}: give HOST:PORT, such as 127.0.0.1:6000")
    return host.strip("[]"), int(port)


@dataclass
class ClusterSpec:
    """What the cluster flags of one worker say.

    Example::

        >>> spec = ClusterSpec("w1", parse_address("--control", "10.0.0.1:6000"))
        >>> spec.initializer, spec.worker_count, spec.data, spec.join_timeout
        (False, 1, None, 30.0)
    """

    name: str
    control: tuple[str, int]
    initializer: bool = False
    worker_count: int = 1
    data: tuple[str, int] | None = None
    external: tuple[str, int] | None = None
    secret: str | None = None
    join_timeout: float = 30.0
    run_dir: str | None = None


class ClusterControl:
    """What the external port asks, answered by the coordinator once the cluster has formed
    (before that: who has joined, not processing).

    Example::

        >>> control = ClusterControl(); control.joined.append("initializer")
        >>> asyncio.run(control.status())
        {'worker_names': ['initializer'], 'worker_count': 1, 'processing_messages': False}
        >>> asyncio.run(control.shutdown())
        Traceback (most recent call last):
        ...
        RuntimeError: the cluster is still forming: 1 worker(s) joined so far
    """

    def __init__(self):
        self.coordinator: Coordinator | None = None
        self.joined: list[str] = []

    async def status(self) -> dict:
        """Worker names and count, and whether the cluster is processing messages (see
        ``Coordinator.status``); while it forms, the workers that have joined so far."""
        if self.coordinator is None:
            return {"worker_names": list(self.joined), "worker_count": len(self.joined),
                    "processing_messages": False}
        return await self.coordinator.status()

    async def partitions(self) -> dict:
        """The coordinator's ``partitions``; RuntimeError while the cluster is forming."""
        return await self._formed().partitions()

    async def state_entities(self) -> dict:
        """The coordinator's ``state_entities``; RuntimeError while the cluster is forming."""
        return await self._formed().state_entities()

    async def shutdown(self) -> dict:
        """A clean shutdown of the cluster (``Coordinator.shutdown``); RuntimeError while it
        is forming."""
        return await self._formed().shutdown()

    def _formed(self) -> Coordinator:
        if self.coordinator is None:
            raise RuntimeError("the cluster is still forming: "
                               f"{len(self.joined)} worker(s) joined so far")
        return self.coordinator


class Initializer:
    """The control port of the first worker: takes ``worker_count`` workers in, sends each the
    topology, then runs the coordinator.

    Make it on the loop it will run on. Example (a cluster of one, formed on 127.0.0.1; its
    worker goes away before it is ready, so the run ends at once)::

        >>> async def form_alone():
        ...     spec = ClusterSpec(INITIALIZER, ("127.0.0.1", 0), initializer=True)
        ...     initializer = Initializer(spec, key_groups=4, control=ClusterControl())
        ...     await initializer.start()              # spec.control gets the port picked
        ...     data = DataPort(spec, "127.0.0.1", 0)
        ...     await data.start()
        ...     coordinating = asyncio.create_task(initializer.coordinate())
        ...     reader, writer = await join(spec, data)
        ...     topology = await receive_topology(reader, spec)
        ...     writer.close()
        ...     summaries = await coordinating
        ...     await data.close(); await initializer.close()
        ...     return topology["index"], [w["name"] for w in topology["workers"]], summaries
        >>> asyncio.run(form_alone())
        (0, ['initializer'], [None])
    """

    def __init__(self, spec: ClusterSpec, key_groups: int, control: ClusterControl,
                 flush_timeout: float = 30.0, checkpoint_interval: float | None = None,
                 metrics=None):
        self.flush_timeout = flush_timeout
        self.checkpoint_interval = checkpoint_interval
        #: The metrics hub the coordinator feeds, if any.
        self.metrics = metrics
        self.spec = spec
        self.key_groups = key_groups
        self.control = control
        self.joined: list[tuple[dict, asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.formed = asyncio.get_running_loop().create_future()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen on the spec's control address (port 0 picks a port, written back into
        ``spec.control``); FormationError if it cannot."""
        host, port = self.spec.control
        try:
            self.server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        except OSError as exc:
            raise FormationError(f"cannot listen on --control {host}:{port}: "
                                 f"{exc.strerror or exc}") from None
        self.spec.control = (host, self.server.sockets[0].getsockname()[1])   # port 0 picks one

    async def _accept(self, reader, writer) -> None:
        hello = await server_handshake(reader, writer, self.spec.secret, "control")
        if hello is None:
            return
        name = str(hello.get("name") or "")
        problem = None
        if self.formed.done():
            problem = (f"the cluster already has its {self.spec.worker_count} workers; "
                       f"start it with a larger --worker-count to add more")
        elif name in (h["name"] for h, _, _ in self.joined):
            problem = f"a worker named {name!r} has already joined: give each worker its own --name"
        if problem is not None:
            log.warning("refused worker %r: %s", name, problem)
            writer.write(encode_message({"type": "refused", "why": problem}))
            writer.close()
            return
        self.joined.append((hello, reader, writer))
        self.control.joined.append(name)
        log.info("worker %r joined (%d of %d)", name, len(self.joined), self.spec.worker_count)
        if len(self.joined) == self.spec.worker_count:
            self.formed.set_result(None)

    async def coordinate(self) -> list:
        """Wait for every worker, send the topology, run the coordinator to the end."""
        await self.formed
        joined = sorted(self.joined, key=lambda j: (j[0]["name"] != INITIALIZER, j[0]["name"]))
        workers = [{"name": h["name"], "data": h["data"], "pid": h.get("pid"),
                    "host": h.get("host")} for h, _, _ in joined]
        members = []
        for index, (hello, reader, writer) in enumerate(joined):
            writer.write(encode_message({"type": "topology", "index": index, "workers": workers,
                                         "key_groups": self.key_groups}))
            members.append(MemberHandle(hello["name"], index, reader, writer, hello.get("pid")))
        coordinator = Coordinator(members, self.key_groups, flush_timeout=self.flush_timeout,
                                  checkpoint_interval=self.checkpoint_interval,
                                  metrics=self.metrics)
        self.control.coordinator = coordinator
        return await coordinator.run()

    async def close(self) -> None:
        """Stop listening on the control port (connections already taken stay open)."""
        if self.server is not None:
            self.server.close()


class DataPort:
    """This worker's data listener: the workers before it connect here.

    Example (worker 0 never connects)::

        >>> async def nobody_comes():
        ...     data = DataPort(ClusterSpec("w1", ("127.0.0.1", 6000)), "127.0.0.1", 0)
        ...     await data.start()                     # port 0 picks a port
        ...     try:
        ...         await data.wait_for(0, deadline=time.monotonic())
        ...     except FormationError as exc:
        ...         return str(exc).replace(data.address, "ADDRESS")
        ...     finally:
        ...         await data.close()
        >>> asyncio.run(nobody_comes())
        "worker 0 did not connect to this worker's data port ADDRESS; can it reach this address?"
    """

    def __init__(self, spec: ClusterSpec, host: str, port: int):
        self.spec = spec
        self.host, self.port = host, port
        self.server: asyncio.AbstractServer | None = None
        self.arrived: dict[int, tuple] = {}
        self.taken: set[int] = set()
        self.changed = asyncio.Event()

    async def start(self) -> None:
        """Listen on the data address (port 0 picks a port, kept in ``port``);
        FormationError if it cannot."""
        try:
            self.server = await asyncio.start_server(self._accept, self.host, self.port,
                                                     reuse_address=True)
        except OSError as exc:
            raise FormationError(f"cannot listen for data on {self.host}:{self.port}: "
                                 f"{exc.strerror or exc}") from None
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        """``HOST:PORT`` of the data listener, as the other workers are told it."""
        return f"{self.host}:{self.port}"

    async def _accept(self, reader, writer) -> None:
        hello = await server_handshake(reader, writer, self.spec.secret, "data")
        if hello is None:
            return
        index = hello.get("index")
        if not isinstance(index, int) or index < 0 or index in self.arrived or index in self.taken:
            log.warning("refused a data connection from %s: it claims worker %r, which is not a "
                        "worker still to link", peer_name(writer), index)
            writer.close()
            return
        self.arrived[index] = (reader, writer)
        self.changed.set()

    async def wait_for(self, index: int, deadline: float) -> tuple:
        """The (reader, writer) of worker ``index``'s data connection, once it has connected
        and proved the secret; FormationError if it has not by ``deadline``
        (``time.monotonic()``)."""
        while index not in self.arrived:
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise FormationError(f"worker {index} did not connect to this worker's data "
                                     f"port {self.address}; can it reach this address?")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass
        self.taken.add(index)
        return self.arrived.pop(index)

    async def close(self) -> None:
        """Stop listening for data connections (those already taken stay open)."""
        if self.server is not None:
            self.server.close()


def adopt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: TcpLink) -> TcpLink:
    """Hand a connection whose handshake is done over to ``link`` (a Protocol), with any
    bytes its stream had already read.

    Example (a record that came right behind a handshake line)::

        >>> from wallaroo.runtime.flow import FlowControl
        >>> async def hand_over():
        ...     got = asyncio.get_running_loop().create_future()
        ...     async def accept(reader, writer):
        ...         await reader.readline()                # the handshake, say
        ...         adopt(reader, writer, TcpLink(FlowControl(), FlowControl(), got.set_result,
        ...                                       "w1"))
        ...     server = await asyncio.start_server(accept, "127.0.0.1", 0)
        ...     reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        ...     writer.write(b"hello\\n" + b"\\x00\\x00\\x00\\x02hi")
        ...     record = await got
        ...     writer.close(); server.close()
        ...     return record
        >>> asyncio.run(hand_over())
        b'hi'
    """
    transport = writer.transport
    link.stream = (reader, writer)   # a stream left to the garbage collector closes its socket
    transport.set_protocol(link)
    link.connection_made(transport)
    leftover = bytes(getattr(reader, "_buffer", b""))
    if leftover:
        link.data_received(leftover)
    return link


async def join(spec: ClusterSpec, data: DataPort) -> tuple:
    """Connect to the initializer (retrying until ``join_timeout``); the control connection's
    (reader, writer). FormationError if it cannot be reached or refuses this worker.

    Example (nothing listens at the control address; see Initializer for a join that works)::

        >>> import socket
        >>> with socket.socket() as probe:             # a port nobody listens on
        ...     probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]
        >>> spec = ClusterSpec("w1", ("127.0.0.1", port), join_timeout=0)
        >>> asyncio.run(join(spec, DataPort(spec, "127.0.0.1", 0)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        wallaroo.cluster.formation.FormationError: could not reach the initializer at ...
    """
    host, port = spec.control
    deadline = time.monotonic() + spec.join_timeout
    attempts, last = 0, ""
    warned = False
    while True:
        attempts += 1
        try:
            reader, writer = await asyncio.open_connection(host, port)
            break
        except OSError as exc:
            last = exc.strerror or str(exc)
        if time.monotonic() >= deadline:
            raise FormationError(
                f"could not reach the initializer at --control {host}:{port}: {attempts} "
                f"attempts over {spec.join_timeout:g} s, the last failed with: {last}. Is the "
                f"initializer running (--cluster-initializer), and is {host}:{port} its "
                f"--control address, reachable from here?")
        if not warned:
            log.warning("cannot reach the initializer at %s:%d yet (%s); retrying for %g s",
                        host, port, last, spec.join_timeout)
            warned = True
        await asyncio.sleep(RETRY_INTERVAL)
    try:
        await client_handshake(reader, writer, spec.secret, "control",
                               {"name": spec.name, "data": data.address, "pid": os.getpid(),
                                "host": socket.gethostname()})
    except AuthError as exc:
        writer.close()
        raise FormationError(f"the initializer at {host}:{port} refused this worker: {exc}") from None
    log.info("connected to the initializer at %s:%d", host, port)
    return reader, writer


async def receive_topology(reader, spec: ClusterSpec) -> dict:
    """The topology the initializer sends once every worker has joined; FormationError if
    the connection ends or the initializer refused this worker.

    Example::

        >>> from wallaroo.cluster.wire import encode_message
        >>> async def topology_of(*messages):
        ...     reader = asyncio.StreamReader()
        ...     reader.feed_data(b"".join(map(encode_message, messages)))
        ...     reader.feed_eof()
        ...     return await receive_topology(reader, ClusterSpec("w1", ("127.0.0.1", 6000)))
        >>> workers = [{"name": "initializer", "data": "127.0.0.1:6001"},
        ...            {"name": "w1", "data": "127.0.0.1:6002"}]
        >>> asyncio.run(topology_of({"type": "topology", "index": 1, "workers": workers,
        ...                          "key_groups": 4}))["index"]
        1
        >>> try:
        ...     asyncio.run(topology_of({"type": "refused", "why": "the cluster is full"}))
        ... except FormationError as exc:
        ...     print(exc)
        the initializer refused this worker: the cluster is full
    """
    try:
        message = await read_message(reader)
    except (WireError, OSError) as exc:
        raise FormationError(f"the control connection broke before the topology came: {exc}") from None
    if message is None:
        raise FormationError("the initializer closed the connection before sending the topology")
    if message.get("type") == "refused":
        raise FormationError(f"the initializer refused this worker: {message.get('why')}")
    if message.get("type") != "topology":
        raise FormationError(f"expected the topology from the initializer, got {message.get('type')!r}")
    names = [w["name"] for w in message["workers"]]
    log.info("topology received: %d workers (%s); this is %s, worker %d", len(names),
             ", ".join(names), spec.name, message["index"])
    return message


def link_over_tcp(data: DataPort, topology: dict, spec: ClusterSpec):
    """``connect_links`` for a Member of a TCP cluster: connect to every worker after this
    one, take the connections of every worker before it.

    Example: ``result = await member.run(link_over_tcp(data, topology, spec))`` (as
    wallaroo.cluster.launch.run_cluster_worker does, once ``receive_topology`` returned).
    """
    async def connect(member) -> None:
        me, workers = topology["index"], topology["workers"]
        worker = member.worker
        deadline = time.monotonic() + spec.join_timeout
        for index, info in enumerate(workers):
            if index == me:
                continue
            if index > me:
                host, port = parse_address("data address", info["data"])
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                    await client_handshake(reader, writer, spec.secret, "data", {"index": me})
                except (OSError, AuthError) as exc:
                    raise FormationError(f"cannot link to worker {info['name']} at "
                                         f"{info['data']}: {exc}") from None
            else:
                reader, writer = await data.wait_for(index, deadline)
            link = TcpLink(worker.flow, worker.intake,
                           functools.partial(member.deliver, sender=index), info["name"])
            link.on_lost = member.link_lost
            member.links[index] = adopt(reader, writer, link)
        for index, (_, writer) in list(data.arrived.items()):   # claims of no worker to link
            log.warning("refused a data connection from %s: it claims worker %r, which is not "
                        "a worker before this one", peer_name(writer), index)
            writer.close()
            data.arrived.pop(index)
        log.info("ready: linked to %d other worker(s) over TCP", len(workers) - 1)
    return connect


class RunFile:
    """A small JSON file naming a running worker (pid, addresses); removed on a clean stop.
    (``kind`` names another file of a worker, kept the same way.)

    It lives in ``folder`` (``--resilience-dir``) or in a folder of this user's own in the
    system's temporary folder (created 0700, refused if someone else owns it); it is written
    without following links, so nobody can point it at another file.

    Example::

        >>> import tempfile
        >>> f = RunFile(tempfile.mkdtemp(), "app", "w1"); f.write({"pid": 1})
        >>> os.path.exists(f.path), f.remove(), os.path.exists(f.path)
        (True, None, False)
    """

    def __init__(self, folder: str | None, app_name: str, worker: str, kind: str = "worker"):
        if folder is None:
            folder = os.path.join(tempfile.gettempdir(), f"wallaroo-{os.getuid()}")
            os.makedirs(folder, mode=0o700, exist_ok=True)
            info = os.lstat(folder)
            if info.st_uid != os.getuid() or info.st_mode & 0o077 or not stat.S_ISDIR(info.st_mode):
                raise FormationError(f"{folder} is not a private folder of this user: remove it, "
                                     f"or give --resilience-dir")
        else:
            os.makedirs(folder, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{app_name}-{worker}")
        self.path = os.path.join(folder, f"{safe}.{kind}.json")

    def read(self) -> dict | None:
        """The file's JSON, or None when there is no such file."""
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def write(self, data: dict) -> None:
        """Write ``data`` as the file's JSON, replacing what it held (a reader never sees half
        of it)."""
        partial = self.path + ".partial"
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(partial, self.path)

    def remove(self) -> None:
        """Remove the file (it may be gone already)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def default_data_host(control: tuple[str, int]) -> str:
    """The address this host would use to reach ``control``: where the others can most
    likely reach this worker's data port. ``control``'s own host if no route is found.

    Example::

        >>> default_data_host(("127.0.0.1", 6000))
        '127.0.0.1'
    """
    family = socket.AF_INET6 if ":" in control[0] else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(control)   # no packet is sent: this only picks a route
            return probe.getsockname()[0]
    except OSError:
        return control[0]
