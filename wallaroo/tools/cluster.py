"""``wallaroo cluster``: ask a running cluster through its external control port.

Speaks the framed protocol of :mod:`wallaroo.cluster.external` to the address the cluster was
started with (``wallaroo-run --external HOST:PORT``). When the cluster has a secret, give the
same one with ``--secret`` or, better (a flag shows in ``ps``), ``WALLAROO_CLUSTER_SECRET``.
Exit code 0 on success, 1 when the port cannot be reached, the secret is refused or the
cluster answers with an error.

Example::

    wallaroo cluster status --external 127.0.0.1:5050
    wallaroo cluster partitions --external 127.0.0.1:5050 --json
    WALLAROO_CLUSTER_SECRET=s3cret wallaroo cluster shutdown --external 10.0.0.1:5050

The human-readable forms::

    >>> print(describe_status({"worker_names": ["initializer", "w1"], "worker_count": 2,
    ...                        "processing_messages": True}))
    2 workers: initializer, w1 — processing
    >>> print(describe_partitions({"key_groups": 4, "workers": {"initializer": [0, 1], "w1": [2, 3]},
    ...                            "state_partitions": {"count": {"initializer": 12, "w1": 9}}}))
    4 key groups over 2 workers
      initializer: 2 key groups (0-1)
      w1: 2 key groups (2-3)
    state keys per worker:
      count: initializer 12, w1 9
    >>> print(describe_state_entities({"count": {"workers": {"initializer": 12, "w1": 9}, "total": 21}}))
    count: 21 keys (initializer 12, w1 9)
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any

import click

from wallaroo.cluster.auth import SECRET_ENV, AuthError, cluster_secret
from wallaroo.cluster.external import (CLEAN_SHUTDOWN, PARTITIONS, STATE_ENTITIES, STATUS, ExternalClient,
                                       ExternalError)
from wallaroo.tools.framing import Address, HostPort, fail


def _ranges(numbers: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` as ``"0-2, 5, 7-8"``."""
    parts: list[str] = []
    run: list[int] = []
    for n in sorted(numbers):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [n]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(parts)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _per_worker(counts: dict[str, Any]) -> str:
    return ", ".join(f"{worker} {n}" for worker, n in counts.items())


def describe_status(reply: dict[str, Any]) -> str:
    """One line: how many workers, their names, and whether they are processing messages."""
    names = [str(name) for name in reply.get("worker_names", [])]
    count = reply.get("worker_count", len(names))
    line = f"{_plural(count, 'worker')}: {', '.join(names)}" if names else _plural(count, "worker")
    processing = reply.get("processing_messages")
    if processing is not None:
        line += " — processing" if processing else " — not processing"
    return line


def describe_partitions(reply: dict[str, Any]) -> str:
    """Key groups per worker (as ranges), then state keys per worker for each state."""
    workers = reply.get("workers", {})
    groups = reply.get("key_groups", sum(len(g) for g in workers.values()))
    lines = [f"{_plural(groups, 'key group')} over {_plural(len(workers), 'worker')}"]
    for worker, owned in workers.items():
        lines.append(f"  {worker}: {_plural(len(owned), 'key group')}"
                     + (f" ({_ranges(owned)})" if owned else ""))
    states = reply.get("state_partitions") or {}
    if states:
        lines.append("state keys per worker:")
        for state, counts in states.items():
            lines.append(f"  {state}: {_per_worker(counts) if isinstance(counts, dict) else counts}")
    return "\n".join(lines)


def describe_state_entities(reply: dict[str, Any]) -> str:
    """One line per state computation: its keys in total and per worker."""
    if not reply:
        return "no state computations"
    lines = []
    for state, info in reply.items():
        if isinstance(info, dict) and isinstance(info.get("workers"), dict):
            workers = info["workers"]
            total = info.get("total", sum(workers.values()))
        elif isinstance(info, dict) and info and all(isinstance(v, int) for v in info.values()):
            workers, total = info, sum(info.values())   # {worker: keys} without a total
        else:
            lines.append(f"{state}: {json.dumps(info)}")
            continue
        lines.append(f"{state}: {_plural(total, 'key')} ({_per_worker(workers)})")
    return "\n".join(lines)


def describe_shutdown(reply: dict[str, Any]) -> str:
    """What the cluster said to a shutdown request."""
    if reply.get("shutting_down"):
        return "the cluster is shutting down"
    return f"shutdown requested; the cluster answered {json.dumps(reply)}"


async def _ask(address: Address, secret: str | None, timeout: float, message_id: int) -> dict[str, Any]:
    client = await ExternalClient.connect(address.host, address.port, secret=secret, timeout=timeout)
    try:
        return await client.request(message_id)
    finally:
        await client.close()


def _query(address: Address, secret: str | None, timeout: float, message_id: int) -> dict[str, Any]:
    """Send one request; on any failure print what happened and exit 1."""
    where = f"the external control port at {address}"
    try:
        return asyncio.run(_ask(address, secret, timeout, message_id))
    except ConnectionRefusedError:
        fail("cluster", f"cannot reach {where}: connection refused; "
                        f"is the cluster running with --external {address}?")
    except TimeoutError:
        fail("cluster", f"no answer from {where} within {timeout:g} s; "
                        f"is the cluster running with --external {address}?")
    except AuthError as err:
        hint = "" if secret else f" (this client has no secret: give it with --secret or {SECRET_ENV})"
        fail("cluster", f"the cluster at {address} refused this client: {err}{hint}")
    except ExternalError as err:
        fail("cluster", f"{where} answered with an error: {err}")
    except OSError as err:
        fail("cluster", f"cannot reach {where}: {err.strerror or err}; "
                        f"is the cluster running with --external {address}?")


def _control_command(name: str, message_id: int, describe: Callable[[dict[str, Any]], str],
                     help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.option("--external", "address", required=True, type=HostPort(allow_port_zero=False),
                  help="HOST:PORT of the cluster's external control port (wallaroo-run --external).")
    @click.option("--secret", default=None, metavar="SECRET",
                  help=f"The cluster secret; default ${SECRET_ENV} (safer: a flag shows in ps).")
    @click.option("--json", "as_json", is_flag=True, help="Print the cluster's reply as JSON.")
    @click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
                  help="Seconds to wait for the connection and for each answer.")
    def command(address: Address, secret: str | None, as_json: bool, timeout: float) -> None:
        reply = _query(address, cluster_secret(secret), timeout, message_id)
        click.echo(json.dumps(reply, indent=2, ensure_ascii=False) if as_json else describe(reply))

    return command


@click.group(name="cluster")
def cluster() -> None:
    """Ask a running cluster through its external control port.

    Example: wallaroo cluster status --external 127.0.0.1:5050
    """


cluster.add_command(_control_command(
    "status", STATUS, describe_status,
    "Print the workers and whether they are processing messages.\n\n"
    "Example: wallaroo cluster status --external 127.0.0.1:5050"))
cluster.add_command(_control_command(
    "partitions", PARTITIONS, describe_partitions,
    "Print which worker owns each key group, and the state keys on each worker.\n\n"
    "Example: wallaroo cluster partitions --external 127.0.0.1:5050 --json"))
cluster.add_command(_control_command(
    "state-entities", STATE_ENTITIES, describe_state_entities,
    "Print how many keys each state computation holds, per worker and in total.\n\n"
    "Example: wallaroo cluster state-entities --external 127.0.0.1:5050"))
cluster.add_command(_control_command(
    "shutdown", CLEAN_SHUTDOWN, describe_shutdown,
    "Shut the whole cluster down cleanly.\n\n"
    "Example: wallaroo cluster shutdown --external 127.0.0.1:5050"))
