"""How ``wallaroo-run`` runs with several workers: as the supervisor of local workers, as one
of them, or as a worker of a TCP cluster (see wallaroo.cluster.supervisor and
wallaroo.cluster.formation).

Example::

    >>> supervise.__doc__.splitlines()[0]
    'Start ``count`` local workers and coordinate them; the exit code.'
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import replace

from wallaroo.api.configs import TCPSourceConfig
from wallaroo.cluster.auth import is_loopback
from wallaroo.cluster.external import ExternalServer
from wallaroo.cluster.formation import (
    ClusterControl, ClusterSpec, DataPort, FormationError, Initializer, RunFile, default_data_host,
    join, link_over_tcp, receive_topology,
)
from wallaroo.cluster.member import ClusterStopped, Member
from wallaroo.connectors.forked import stop_children
from wallaroo.metrics.service import MetricsService, MetricsUnavailable
from wallaroo.cluster.supervisor import (
    LocalBootstrap, Supervisor, SupervisorError, connect_rings, control_connection, worker_name,
    wallaroo_run_command,
)
from wallaroo.runtime.placement import Placement
from wallaroo.runtime.report import merge_summaries, report_end, result_summary, write_stats
from wallaroo.runtime.worker import RunOptions, StartupError

log = logging.getLogger("wallaroo")


async def run_local_member(local: LocalBootstrap, app, options: RunOptions, source_configs: dict,
                           sink_configs: dict):
    """Run as local worker ``local.index`` of a supervisor; the worker's result, or an exit
    code when it could not start.

    Each port-0 TCP source listens on the port the supervisor picked for it; SIGINT is
    ignored (the supervisor decides what it means) and SIGTERM stops this worker.

    Example: ``result = await run_local_member(LocalBootstrap.from_env(), app, options, {},
    {})`` (in a process the supervisor started: see wallaroo.runtime.launcher).
    """
    source_configs = dict(source_configs)
    for node in app.graph.sources:
        config = source_configs.get(node.name, node.spec)
        if node.name in local.source_ports and isinstance(config, TCPSourceConfig):
            source_configs[node.name] = TCPSourceConfig(config.name, config.host,
                                                        local.source_ports[node.name],
                                                        config.decoder, max_size=config.max_size)
    placement = Placement(local.index, local.count, worker_name(local.index), options.key_groups,
                          shared_ports=True)
    # Ctrl-C reaches the whole process group: the supervisor alone decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = await control_connection(local.control_fd)
    member = Member(app, options, source_configs, sink_configs, placement, control,
                    app.serializer)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, member.worker.signal_stop)
    try:
        result = await member.run(lambda m: connect_rings(m, local))
    except StartupError as exc:
        print(f"wallaroo-run: {exc}", file=sys.stderr)
        return 2
    except ClusterStopped as exc:
        log.error("%s", exc)
        return 1
    if member.rolled_back:   # the supervisor starts every worker again
        return 1
    report_end(result, member.worker.errors.summary())
    return result


async def supervise(argv: list[str], app, options: RunOptions, source_configs: dict,
                    count: int, stats_file: str | None, external: tuple[str, int] | None = None,
                    secret: str | None = None,
                    metrics_address: tuple[str, int] | None = None) -> int:
    """Start ``count`` local workers and coordinate them; the exit code.

    ``argv`` is the command line each worker runs; with ``stats_file``, the workers' merged
    summary is written there; with ``metrics_address``, the workers' metrics are served there.

    Example: ``code = await supervise(["--app", "wc", "--workers", "4"], app, RunOptions(),
    {}, 4, None)`` (what ``wallaroo-run --app wc --workers 4`` does: see
    wallaroo.runtime.launcher).
    """
    tcp_sources = {}
    for node in app.graph.sources:
        config = source_configs.get(node.name, node.spec)
        if isinstance(config, TCPSourceConfig):
            tcp_sources[node.name] = (config.host, config.port)
    pid = os.getpid()

    started = time.monotonic()
    service = await _start_metrics(app, count, metrics_address, options.resilient)
    if service is False:
        return 2

    def announce(members) -> None:
        pids = ", ".join(str(m.pid) for m in members)
        print(f'wallaroo: running "{app.name}" (pid {pid}) | {members[0].ready["describe"]} | '
              f'{count} workers (pids {pids})', file=sys.stderr, flush=True)
        if service is not None:
            service.announce()
    supervisor = Supervisor(argv, count, options.key_groups, tcp_sources, announce,
                            external, secret, options.flush_timeout,
                            options.checkpoint_interval if options.resilient else None,
                            service.hub if service is not None else None)
    try:
        code, summaries = await supervisor.run()
    except SupervisorError as exc:
        print(f"wallaroo-run: {exc}", file=sys.stderr)
        return 2
    finally:
        if service is not None:
            await service.close()
    if stats_file:
        summary = merge_summaries([s for s in summaries if s])
        summary["exit_code"] = max(summary["exit_code"], code)   # a lost worker fails the run
        if options.resilient:
            summary["checkpoints"] = {**supervisor.checkpoint_summary(),
                                      "restarts": supervisor.restarts}
        write_stats(stats_file, app.name, summary, time.monotonic() - started)
    return code


async def _start_metrics(app, workers: int, address: tuple[str, int] | None, resilient: bool):
    """The run's metrics service, started (None without an address; False, once said why, when
    the address cannot be had)."""
    if address is None:
        return None
    service = MetricsService(app, workers, address)
    if resilient:
        service.hub.enable_checkpoints()
    try:
        await service.start()
    except MetricsUnavailable as exc:
        print(f"wallaroo-run: {exc}", file=sys.stderr)
        return False
    return service


async def run_cluster_worker(spec: ClusterSpec, app, options: RunOptions, source_configs: dict,
                             sink_configs: dict, stats_file: str | None,
                             metrics_address: tuple[str, int] | None = None) -> int:
    """Run as a worker of a TCP cluster (and, with ``--cluster-initializer``, its
    coordinator, and the metrics server on ``metrics_address``); the exit code.

    Example (a cluster of one worker, the initializer, on 127.0.0.1; its run file is removed
    once the run ends well)::

        >>> import os, tempfile, wallaroo
        >>> from wallaroo.runtime.worker import RunOptions
        >>> folder = tempfile.mkdtemp()
        >>> out = os.path.join(folder, "out.txt")
        >>> app = wallaroo.build_application("copy", wallaroo.source(
        ...     "n", wallaroo.IterSourceConfig("n", [1, 2, 3]))
        ...     .to_sink(wallaroo.FileSinkConfig(out, wallaroo.encoder(lambda n: f"{n}\\n"))))
        >>> spec = ClusterSpec("initializer", ("127.0.0.1", 0), initializer=True,
        ...                    data=("127.0.0.1", 0), run_dir=folder)
        >>> asyncio.run(run_cluster_worker(spec, app, RunOptions(), {}, {}, stats_file=None))
        0
        >>> sorted(os.listdir(folder))
        ['out.txt']
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    control = ClusterControl()
    initializer = external = coordinating = service = carried = None
    data = None
    if spec.initializer:
        state = None
        if metrics_address is not None and options.resilient:
            carried, state = _carried_metrics(spec, app)
            if state is not None and metrics_address[1] == 0:   # the same address as before
                metrics_address = (metrics_address[0], state.get("port", 0))
        service = await _start_metrics(app, spec.worker_count, metrics_address, options.resilient)
        if service is False:
            return 2
        if service is not None and state is not None:
            _restore_metrics(service, state)
    try:
        if spec.initializer:
            initializer = Initializer(spec, options.key_groups, control, options.flush_timeout,
                                      options.checkpoint_interval if options.resilient else None,
                                      service.hub if service is not None else None)
            await initializer.start()
            coordinating = loop.create_task(initializer.coordinate())
            log.info("initializer: waiting for %d worker(s) on --control %s:%d",
                     spec.worker_count, *spec.control)
        if spec.external is not None:
            external = ExternalServer(control, *spec.external, secret=spec.secret)
            try:
                await external.start()
            except OSError as exc:
                raise FormationError(exc.strerror) from None
        host, port = spec.data or (default_data_host(spec.control), 0)
        if spec.data is None and spec.secret is None and not is_loopback(host):
            raise FormationError(
                f"this worker would take data from the other workers on {host} (the address "
                f"it reaches --control from), which is not loopback: set the same cluster "
                f"secret on every worker (--cluster-secret or WALLAROO_CLUSTER_SECRET), or "
                f"give --my-data on a loopback address")
        data = DataPort(spec, host, port)
        await data.start()
        reader, writer = await join(spec, data)
        topology = await receive_topology(reader, spec)
    except FormationError as exc:
        print(f"wallaroo-run: {exc}", file=sys.stderr)
        await _close(coordinating, initializer, external, data, service)
        return 1
    options = replace(options, key_groups=topology["key_groups"])
    placement = Placement(topology["index"], len(topology["workers"]), spec.name,
                          options.key_groups)
    try:
        run_file = RunFile(spec.run_dir, app.name, spec.name)
        run_file.write({"pid": os.getpid(), "name": spec.name, "index": topology["index"],
                        "control": "%s:%d" % spec.control, "data": data.address,
                        "workers": topology["workers"]})
    except (OSError, FormationError) as exc:
        print(f"wallaroo-run: cannot write this worker's run file: {exc}", file=sys.stderr)
        writer.close()
        await _close(coordinating, initializer, external, data, service)
        return 1
    member = Member(app, options, source_configs, sink_configs, placement, (reader, writer),
                    app.serializer)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, member.worker.signal_stop)

    def on_started(worker) -> None:
        print(f'wallaroo: running "{app.name}" (pid {os.getpid()}) | {worker.describe()} | '
              f'worker {spec.name} ({placement.index + 1} of {placement.count})',
              file=sys.stderr, flush=True)
        if service is not None:
            service.announce()

    try:
        result = await member.run(link_over_tcp(data, topology, spec), on_started)
    except (StartupError, FormationError, ClusterStopped) as exc:
        print(f"wallaroo-run: {exc}", file=sys.stderr)
        await _close(coordinating, initializer, external, data, service)
        if options.resilient and (member.rolled_back or member.coordinator_lost):
            _restart_to_recover(str(exc), service, carried)
        return 2 if isinstance(exc, StartupError) else 1
    summaries = await coordinating if coordinating is not None else None
    await _close(None, initializer, external, data, service)
    if options.resilient and (member.rolled_back or member.coordinator_lost):
        _restart_to_recover(member.stopped_by or "the cluster rolls back", service, carried)
    failed = control.coordinator is not None and control.coordinator.failure is not None
    code = max(result.exit_code, 1 if failed else 0)   # the coordinator saw a worker fail
    if stats_file:
        summary = (merge_summaries([s for s in summaries if s]) if summaries
                   else result_summary(result, member.worker))
        summary["exit_code"] = max(summary["exit_code"], code)
        write_stats(stats_file, app.name, summary, time.monotonic() - started)
    report_end(result, member.worker.errors.summary())
    if code == 0:
        run_file.remove()
    return code


def _carried_metrics(spec: ClusterSpec, app) -> tuple[RunFile | None, dict | None]:
    """Where the initializer keeps its metrics across the exec that restarts it to recover (a
    file named by its pid: an exec keeps the pid, so only this process's next image reads it),
    and what it holds when this process is that next image (None otherwise). The file is
    removed once read."""
    try:
        carried = RunFile(spec.run_dir, app.name, f"{spec.name}-{os.getpid()}", kind="metrics")
        state = carried.read()
        if state is not None:
            carried.remove()
    except (OSError, ValueError, FormationError) as exc:
        log.warning("metrics: cannot carry them across a restart: %s", exc)
        return None, None
    return carried, state


def _restore_metrics(service, state: dict) -> None:
    """The metrics of this initializer's previous image go on, and the restart is counted."""
    try:
        service.hub.restore(state)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("metrics: the figures from before the restart are lost: %s", exc)
    service.hub.workers_restarted()


def _restart_to_recover(why: str, service=None, carried: RunFile | None = None) -> None:
    """With resilience on, a cluster worker that lost the cluster (a worker or the initializer
    died, or the coordinator rolled back) starts itself again with the same command line: it
    rejoins the initializer and restores the last complete checkpoint with the others. (A
    worker stopped for another reason, a failing stage say, is not restarted.) The
    initializer's metrics go into ``carried`` for its next image."""
    stop_children()   # a snapshot being written must not land after the restart looks
    if service is not None and carried is not None:
        try:
            carried.write({**service.hub.state(), "port": service.server.port})
        except OSError as exc:
            log.warning("metrics: cannot keep them across the restart: %s", exc)
    log.warning("%s: restarting this worker with the same command line to restore the last "
                "complete checkpoint", why)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    command = wallaroo_run_command(sys.argv[1:])
    os.execv(command[0], command)


async def _close(coordinating, *servers) -> None:
    for server in servers:
        if server is not None:
            await server.close()
    if coordinating is not None:
        coordinating.cancel()
