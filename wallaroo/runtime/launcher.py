"""``wallaroo-run``: load an application module, apply engine flags, run one worker.

Engine flags are taken out of the command line; everything else reaches
``application_setup(args)``. ``--in`` and ``--out`` are both: the engine applies them to the TCP
sources (by name) and TCP sinks (in order), and they stay in ``args`` for apps that parse them.

Exit codes: 0 clean stop or bounded input done; 1 a stage failed or output could not be
delivered; 2 the application or the command line is wrong (one clear line says what).

Example::

    >>> split_engine_flags(["--app", "wc", "--in", "a@h:1", "--ponythreads", "1", "--x"])[1]
    ['--in', 'a@h:1', '--x']
"""
from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import signal
import sys
import time
import traceback

from dataclasses import dataclass

import wallaroo
from wallaroo.cluster.auth import SecretRequired, cluster_secret, require_secret
from wallaroo.cluster.formation import INITIALIZER, ClusterSpec, parse_address
from wallaroo.cluster.launch import run_cluster_worker, run_local_member, supervise
from wallaroo.cluster.supervisor import LocalBootstrap, worker_name
from wallaroo.api.configs import TCPSinkConfig, TCPSourceConfig
from wallaroo.api.helpers import tcp_parse_input_addrs, tcp_parse_output_addrs
from wallaroo.api.pipeline import Application
from wallaroo._core.chain import set_latency_sampling
from wallaroo.metrics.service import DEFAULT_ADDRESS, MetricsService, MetricsUnavailable
from wallaroo.errors import WallarooParameterError
from wallaroo.runtime.errors import POLICIES
from wallaroo.runtime.metering import Reporter, WorkerMeter
from wallaroo.runtime.report import report_end, result_summary, write_stats
from wallaroo.runtime.worker import SOURCES as SOURCE_KINDS
from wallaroo.runtime.worker import MAX_IDLE_TIMEOUT, RunOptions, StartupError, Worker

log = logging.getLogger("wallaroo")

#: Where checkpoints go with --run-with-resilience and no --resilience-dir (the original's).
DEFAULT_RESILIENCE_DIR = "/tmp"
#: The most local workers ``--workers`` starts.
MAX_LOCAL_WORKERS = 32
#: The cyclic garbage collector's thresholds in a wallaroo-run process. Python's default
#: (700 new containers) makes a stream of batches trigger a collection every few batches,
#: each walking every young list and tuple; one collection per 100,000 new containers
#: keeps cyclic garbage bounded at a few MB and halves the collector's share of the CPU.
#: (Runs in a notebook or a test, in-process, keep the interpreter's own settings.)
GC_THRESHOLDS = (100_000, 20, 20)

# flag -> (destination, takes a value, acts now). Flags that do not act yet are accepted and
# named in a note; they belong to log rotation and stop pauses.
ENGINE_FLAGS: dict[str, tuple[str, bool, bool]] = {}


def _flag(names: str, dest: str, value: bool, acts: bool = True) -> None:
    for name in names.split():
        ENGINE_FLAGS[name] = (dest, value, acts)


_flag("--application-module", "module", True)
_flag("--app", "app", True)
_flag("--on-error", "on_error", True)
_flag("--dead-letter", "dead_letter", True)
_flag("--key-groups", "key_groups", True)
_flag("--flush-timeout", "flush_timeout", True)
_flag("--idle-timeout", "idle_timeout", True)
_flag("--stats-file", "stats_file", True)
_flag("--no-progress", "no_progress", False)
_flag("--explain", "explain", False)
_flag("-h --help", "help", False)
_flag("--workers", "workers", True)
_flag("--cluster-initializer -t", "cluster_initializer", False)
_flag("--worker-count -w", "worker_count", True)
_flag("--control -c", "control", True)
_flag("--data -d", "data", True)
_flag("--my-control -x", "my_control", True)
_flag("--my-data -y", "my_data", True)
_flag("--external -e", "external", True)
_flag("--cluster-secret", "cluster_secret", True)
_flag("--join-timeout", "join_timeout", True)
_flag("--name -n", "name", True)
_flag("--join -j", "join", True, acts=False)
_flag("--metrics -m", "metrics", True)
_flag("--no-metrics", "no_metrics", False)
_flag("--quiet -q", "quiet", False)
_flag("--resilience-dir -r", "resilience_dir", True)
_flag("--run-with-resilience", "run_with_resilience", False)
_flag("--time-between-checkpoints", "time_between_checkpoints", True)
_flag("--log-rotation", "log_rotation", False, acts=False)
_flag("--event-log-file-size -l", "event_log_file_size", True, acts=False)
_flag("--stop-pause -u", "stop_pause", True, acts=False)
PONY_FLAGS = ("--ponythreads", "--ponyminthreads", "--ponynoblock", "--ponypin", "--ponypinasio",
              "--ponynoscale", "--ponycdmin", "--ponycdmax", "--ponygcinitial", "--ponygcfactor")
PONY_VALUE_FLAGS = ("--ponythreads", "--ponyminthreads", "--ponycdmin", "--ponycdmax",
                    "--ponygcinitial", "--ponygcfactor")

USAGE = """usage: wallaroo-run (--app MODULE[:ATTR] | --application-module MODULE) [options] [app args]

Runs a wallaroo application. MODULE is imported from the current directory or PYTHONPATH;
ATTR is an application object or a function like application_setup(args).

options:
  --in NAME@HOST:PORT[,...]   address of the TCP source NAME (port 0 picks a free port)
  --out HOST:PORT[,...]       addresses of the TCP sinks, in the order they were added
  --on-error fail|skip|dead-letter
                              when a computation raises: stop cleanly (default), skip the
                              message, or skip it and write it to the dead-letter file
  --dead-letter PATH          dead-letter file (JSON lines) for bad input and skipped errors
  --key-groups N              number of key groups (default 2048)
  --flush-timeout SECONDS     how long to wait for sinks at the end (default 30)
  --idle-timeout SECONDS      an input silent this long stops holding back the event-time
                              watermark of the windows after it (default 5)
  --stats-file PATH           at the end, write what the run did as JSON: messages in, and
                              per sink messages out and ingest-to-write latency histograms
  --no-progress               no progress line for bounded runs on a terminal
  --explain                   print the physical plan (fused chains, exchanges) and exit
  --run-with-resilience       take checkpoints and recover from them after a crash (a worker
                              that dies is restarted; see docs/resilience.md)
  --resilience-dir DIR        where checkpoints go (default /tmp; must exist)
  --time-between-checkpoints NS
                              nanoseconds between checkpoints (default 1000000000)
  --metrics HOST:PORT         serve the live dashboard, JSON and Prometheus metrics there
                              (default: a free port on 127.0.0.1, printed at startup)
  --no-metrics                no metrics: no latency sampling, no reports, no server
  --quiet                     no metrics line in the log each second
Original Wallaroo flags (--workers, --cluster-initializer, --resilience-dir, --metrics, ...)
are accepted; Pony runtime flags (--ponythreads, ...) are accepted and ignored.
Everything else is passed to application_setup(args)."""


class UsageError(Exception):
    """A command-line or application problem, reported as one line with exit code 2."""


def split_engine_flags(argv: list[str]) -> tuple[dict, list[str]]:
    """Separate engine flags (returned as a dict) from the application's args.

    ``--in`` and ``--out`` stay in the application's args.

    Example::

        >>> split_engine_flags(["--on-error=skip", "--out", "h:1"])
        ({'on_error': 'skip'}, ['--out', 'h:1'])
    """
    flags: dict = {}
    app_args: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in ENGINE_FLAGS:
            dest, takes_value, _ = ENGINE_FLAGS[name]
            if takes_value:
                if eq:
                    value = inline
                elif i + 1 < len(argv):
                    i += 1
                    value = argv[i]
                else:
                    raise UsageError(f"{name} needs a value")
                flags[dest] = value
            else:
                flags[dest] = True
        elif name.startswith("--ponypin") or name in PONY_FLAGS:
            if name in PONY_VALUE_FLAGS and not eq and i + 1 < len(argv):
                i += 1
        else:
            app_args.append(arg)
        i += 1
    return flags, app_args


def load_application(target: str, args: list[str]) -> Application:
    """Import ``module[:attr]`` and build its application.

    Example::

        >>> load_application("no_such_module_here", [])
        Traceback (most recent call last):
        ...
        wallaroo.runtime.launcher.UsageError: cannot import application module ...
    """
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(
                f"cannot import application module {module_name!r}: {exc}. Run wallaroo-run from "
                f"the folder that holds {module_name.split('.')[0]}.py, or add it to PYTHONPATH"
            ) from None
        raise
    obj = module
    for part in (attr or "application_setup").split("."):
        if not hasattr(obj, part):
            if not attr:
                raise UsageError(
                    f"module {module_name!r} has no application_setup(args); define it (returning "
                    f"wallaroo.build_application(...)) or name the application with "
                    f"--app {module_name}:NAME"
                )
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    app = obj if isinstance(obj, Application) else obj(args) if callable(obj) else obj
    if not isinstance(app, Application):
        raise UsageError(
            f"{target} gave {type(app).__name__}, not an application: application_setup(args) "
            f"must return wallaroo.build_application(name, pipeline)"
        )
    if callable(getattr(module, "serialize", None)) and callable(getattr(module, "deserialize", None)):
        app.serializer = (module.serialize, module.deserialize)
    return app


def address_overrides(app: Application, app_args: list[str]) -> tuple[dict, dict]:
    """Source and sink configs that ``--in``/``--out`` put in place of the app's own.

    Example::

        >>> address_overrides.__name__
        'address_overrides'
    """
    sources: dict = {}
    sinks: dict = {}
    if any(a in ("--in", "-i") or a.startswith("--in=") for a in app_args):
        by_name = {n.name: n for n in app.graph.sources}
        for name, host, port in tcp_parse_input_addrs(app_args):
            node = by_name.get(name) or next(
                (n for n in app.graph.sources if getattr(n.spec, "name", None) == name), None)
            if node is None:
                raise UsageError(f"--in names source {name!r}, but the application's sources are "
                                 f"{', '.join(repr(n) for n in by_name)}")
            cfg = node.spec
            if not isinstance(cfg, TCPSourceConfig):
                raise UsageError(f"--in {name}@...: source {name!r} is not a TCP source")
            sources[node.name] = TCPSourceConfig(cfg.name, host, port, cfg.decoder,
                                                 max_size=cfg.max_size)
    if any(a in ("--out", "-o") or a.startswith("--out=") for a in app_args):
        tcp_sinks = [(i, n) for i, n in enumerate(app.graph.sinks) if isinstance(n.spec, TCPSinkConfig)]
        addresses = tcp_parse_output_addrs(app_args)
        if len(addresses) > len(tcp_sinks):
            raise UsageError(f"--out gives {len(addresses)} addresses but the application has "
                             f"{len(tcp_sinks)} TCP sink(s)")
        for (position, node), (host, port) in zip(tcp_sinks, addresses):
            sinks[position] = TCPSinkConfig(host, port, node.spec.encoder)
    return sources, sinks


def _options(flags: dict) -> RunOptions:
    on_error = flags.get("on_error", "fail")
    if on_error not in POLICIES:
        raise UsageError(f"--on-error {on_error!r}: choose one of {', '.join(POLICIES)}")
    try:
        key_groups = int(flags.get("key_groups", RunOptions.key_groups))
        flush_timeout = float(flags.get("flush_timeout", RunOptions.flush_timeout))
        idle_timeout = float(flags.get("idle_timeout", RunOptions.idle_timeout))
    except ValueError as exc:
        raise UsageError(f"bad number: {exc}") from None
    if key_groups <= 0:
        raise UsageError("--key-groups must be a positive number")
    if not 0 < idle_timeout <= MAX_IDLE_TIMEOUT:
        raise UsageError(f"--idle-timeout must be more than 0 and at most {MAX_IDLE_TIMEOUT:.0f} "
                         f"seconds (a year)")
    resilience_dir = None
    interval = RunOptions.checkpoint_interval
    if flags.get("run_with_resilience"):
        resilience_dir = flags.get("resilience_dir", DEFAULT_RESILIENCE_DIR)
        nanoseconds = _number(flags, "time_between_checkpoints", "--time-between-checkpoints",
                              int(interval * 1e9))
        if nanoseconds < 1_000_000:
            raise UsageError("--time-between-checkpoints is in nanoseconds and must be at least "
                             "1000000 (1 ms); the default is 1000000000 (1 s)")
        interval = nanoseconds / 1e9
    elif "time_between_checkpoints" in flags and LocalBootstrap.from_env() is None:
        log.warning("note: --time-between-checkpoints has no effect without "
                    "--run-with-resilience")
    return RunOptions(on_error=on_error, dead_letter=flags.get("dead_letter"),
                      key_groups=key_groups, flush_timeout=flush_timeout,
                      idle_timeout=idle_timeout, show_progress=not flags.get("no_progress"),
                      resilience_dir=resilience_dir, checkpoint_interval=interval,
                      metrics=not flags.get("no_metrics"), quiet=bool(flags.get("quiet")))


@dataclass
class Topology:
    """How many workers, and where: ``--workers N`` local ones, or a worker of a TCP cluster
    (``cluster``; see wallaroo.cluster)."""

    workers: int = 1
    cluster: ClusterSpec | None = None
    external: tuple[str, int] | None = None
    secret: str | None = None


def _number(flags: dict, dest: str, flag: str, default, kind=int):
    try:
        return kind(flags.get(dest, default))
    except ValueError:
        raise UsageError(f"{flag} {flags[dest]!r} is not a number") from None


def _address(flags: dict, dest: str, flag: str) -> tuple[str, int] | None:
    if dest not in flags:
        return None
    try:
        return parse_address(flag, flags[dest])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _topology(flags: dict) -> Topology:
    """Check the clustering flags together: which mode, and with which addresses."""
    workers = _number(flags, "workers", "--workers", 1)
    if not 1 <= workers <= MAX_LOCAL_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_LOCAL_WORKERS}, not {workers}")
    control = _address(flags, "control", "--control")
    external = _address(flags, "external", "--external")
    secret = cluster_secret(flags.get("cluster_secret"))
    initializer = bool(flags.get("cluster_initializer"))
    binds = [(flag, flags[dest]) for flag, dest in (
        ("--data", "data"), ("--my-data", "my_data"), ("--my-control", "my_control"),
        ("--external", "external")) if dest in flags]
    if initializer and control is not None:
        binds.insert(0, ("--control", flags["control"]))
    try:
        require_secret(binds, secret)
    except SecretRequired as exc:
        raise UsageError(str(exc)) from None
    if flags.get("join"):
        raise UsageError("--join (growing a running cluster) is not supported yet: start every "
                         "worker at once with --worker-count")
    if control is None:
        if initializer or "worker_count" in flags or "data" in flags:
            raise UsageError("a cluster needs --control HOST:PORT (the initializer's control "
                             "address) on every worker")
        return Topology(workers, None, external, secret)
    if workers > 1:
        raise UsageError("--workers runs local workers; with --control each process is one worker "
                         "of the cluster: start one process per worker")
    count = _number(flags, "worker_count", "--worker-count", 1)
    if initializer and count < 1:
        raise UsageError("--worker-count must be at least 1")
    if initializer and "data" not in flags:
        raise UsageError("the initializer needs --data HOST:PORT (where the other workers "
                         "reach its data channel)")
    if not initializer and "data" in flags:
        raise UsageError("--data is for the initializer; other workers use --my-data HOST:PORT")
    if external is not None and not initializer:
        raise UsageError("--external is served by the initializer (it runs the coordinator): "
                         "give it there, not on other workers")
    name = INITIALIZER if initializer else flags.get("name")
    if not name:
        raise UsageError("name this worker with --name NAME (each worker its own)")
    if not initializer and name == INITIALIZER:
        raise UsageError(f"the name {INITIALIZER!r} is the initializer's; pick another --name")
    spec = ClusterSpec(
        name=name, control=control, initializer=initializer, worker_count=count,
        data=_address(flags, "data", "--data") or _address(flags, "my_data", "--my-data"),
        external=external, secret=secret,
        join_timeout=_number(flags, "join_timeout", "--join-timeout", 30.0, float),
        run_dir=flags.get("resilience_dir"))
    return Topology(1, spec, external, secret)


def _note_delivery_guarantees(app: Application, source_configs: dict, sink_configs: dict) -> None:
    """Say at startup which sources cannot replay and which sinks may repeat output after a
    crash (see docs/resilience.md)."""
    for node in app.graph.sources:
        config = source_configs.get(node.name, node.spec)
        if not getattr(SOURCE_KINDS.get(config.kind), "replayable", False):
            log.warning("resilience: source %r (%s) cannot replay: after a crash, what it took "
                        "since the last checkpoint is lost; use a file, generator or connector "
                        "source for exactly-once", node.name, config.kind)
    for position, node in enumerate(app.graph.sinks):
        config = sink_configs.get(position, node.spec)
        if config.kind not in ("file", "sink_connector"):
            log.warning("resilience: sink %d (%s) is at-least-once: after a crash it writes "
                        "again what followed the last checkpoint; use a file or connector sink "
                        "for exactly-once", position, config.kind)


def _exit_of(result) -> int:
    return result if isinstance(result, int) else result.exit_code


async def _run(worker: Worker, app_name: str, metrics_address: tuple[str, int] | None):
    """Run one worker, with its metrics served on ``metrics_address`` (None: no metrics)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.signal_stop)
    service = reporter = None
    if metrics_address is not None:
        service = MetricsService(worker.app, 1, metrics_address)
        await service.start()
        reporter = Reporter(WorkerMeter(worker), service.hub.update, worker.options.quiet)

    def started(w: Worker) -> None:
        print(f'wallaroo: running "{app_name}" (pid {os.getpid()}) | {w.describe()}',
              file=sys.stderr, flush=True)
        if service is not None:
            service.announce()
            reporter.start()

    try:
        return await worker.run(on_started=started)
    finally:
        if reporter is not None:
            reporter.stop()
        if service is not None:
            await service.close()


def _metrics_address(flags: dict) -> tuple[str, int] | None:
    """Where the metrics are served: ``--metrics HOST:PORT``, the default, or None with
    ``--no-metrics``."""
    if flags.get("no_metrics"):
        if "metrics" in flags:
            raise UsageError("--metrics and --no-metrics contradict each other: give one")
        return None
    return _address(flags, "metrics", "--metrics") or DEFAULT_ADDRESS


def _user_location(exc: BaseException) -> str:
    """`` (at FILE:LINE)`` of the innermost frame of ``exc`` in the user's code, if any.

    Example::

        >>> _user_location(ValueError("no traceback"))
        ''
    """
    package = os.path.dirname(os.path.abspath(wallaroo.__file__))
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if not os.path.abspath(frame.filename).startswith(package + os.sep):
            where = f" (at {frame.filename}:{frame.lineno})"
    return where


def _setup_logging(prefix: str = "wallaroo: ") -> None:
    for old in list(log.handlers):
        log.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run ``wallaroo-run`` with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    gc.set_threshold(*GC_THRESHOLDS)
    _setup_logging()
    try:
        flags, app_args = split_engine_flags(argv)
        if flags.get("help"):
            print(USAGE)
            return 0
        target = flags.get("app") or flags.get("module")
        if not target:
            raise UsageError("name the application with --app MODULE[:ATTR] or "
                             "--application-module MODULE (see wallaroo-run --help)")
        local = LocalBootstrap.from_env()
        later = sorted({name for name, (dest, _, acts) in ENGINE_FLAGS.items()
                        if not acts and dest in flags and name.startswith("--")})
        if later and local is None:
            log.warning("note: %s accepted; log rotation and stop pauses are not in "
                        "this version yet, so this runs without them", ", ".join(later))
        options = _options(flags)
        topology = _topology(flags)
        metrics_address = _metrics_address(flags)
        if metrics_address is None:
            set_latency_sampling(0)
        wallaroo._ARGS = ["wallaroo-run", *argv]
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        app = load_application(target, app_args)
        source_configs, sink_configs = address_overrides(app, app_args)
        worker = Worker(app, options, source_configs, sink_configs)
        if flags.get("explain"):
            print(f'"{app.name}"\n{worker.plan.describe()}')
            return 0
    except (UsageError, WallarooParameterError) as exc:
        print(f"wallaroo-run: {exc}{_user_location(exc)}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("wallaroo-run: the application module failed while loading (traceback above)",
              file=sys.stderr)
        return 2
    if local is not None:
        _setup_logging(f"wallaroo [{worker_name(local.index)}]: ")
        return _exit_of(asyncio.run(run_local_member(local, app, options, source_configs,
                                                     sink_configs)))
    if topology.cluster is not None:
        if "metrics" in flags and not topology.cluster.initializer:
            log.warning("note: --metrics is served by the initializer (every worker reports "
                        "to it); this worker ignores it")
        return asyncio.run(run_cluster_worker(topology.cluster, app, options, source_configs,
                                              sink_configs, flags.get("stats_file"),
                                              metrics_address))
    if options.resilient and local is None:
        _note_delivery_guarantees(app, source_configs, sink_configs)
    # the supervisor serves --external, and restarts workers that die (resilience)
    if topology.workers > 1 or topology.external is not None or options.resilient:
        return asyncio.run(supervise(argv, app, options, source_configs, topology.workers,
                                     flags.get("stats_file"), topology.external, topology.secret,
                                     metrics_address))
    started = time.monotonic()
    try:
        result = asyncio.run(_run(worker, app.name, metrics_address))
    except (StartupError, MetricsUnavailable) as exc:
        print(f"wallaroo-run: {exc}", file=sys.stderr)
        return 2
    if flags.get("stats_file"):
        write_stats(flags["stats_file"], app.name, result_summary(result, worker),
                    time.monotonic() - started)
    report_end(result, worker.errors.summary())
    return result.exit_code
