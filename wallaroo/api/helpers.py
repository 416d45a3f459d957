"""Helpers of the original API: address parsing, time units, default serialization.

Example::

    >>> tcp_parse_input_addrs(["--in", "words@127.0.0.1:7010"])
    [('words', '127.0.0.1', '7010')]
    >>> seconds(2)
    2000000000
"""
from __future__ import annotations

import datetime as _dt
import pickle
from typing import Sequence

from wallaroo.errors import WallarooParameterError


def _flag_values(args: Sequence[str], long: str, short: str) -> list[str]:
    values = []
    args = list(args)
    for i, arg in enumerate(args):
        if arg in (long, short):
            if i + 1 >= len(args):
                raise WallarooParameterError(f"{long} needs a value")
            values.append(args[i + 1])
        elif arg.startswith(long + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _split_host_port(text: str, flag: str) -> tuple[str, str]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise WallarooParameterError(f"{flag} {text!r}: expected host:port, e.g. 127.0.0.1:7010")
    return host.strip("[]"), port


def tcp_parse_input_addrs(args: Sequence[str]) -> list[tuple[str, str, str]]:
    """``[(name, host, port), ...]`` from ``--in name@host:port,...`` (``-i`` too).

    Example::

        >>> tcp_parse_input_addrs(["-i", "a@h:1,b@h:2"])
        [('a', 'h', '1'), ('b', 'h', '2')]
    """
    found = []
    for value in _flag_values(args, "--in", "-i"):
        for item in filter(None, value.split(",")):
            name, sep, address = item.partition("@")
            if not sep or not name:
                raise WallarooParameterError(
                    f"--in {item!r}: expected name@host:port, e.g. 'Split and Count@127.0.0.1:7010'"
                )
            host, port = _split_host_port(address, "--in")
            found.append((name, host, port))
    if not found:
        raise WallarooParameterError("--in is required: --in name@host:port[,name@host:port...]")
    return found


def tcp_parse_output_addrs(args: Sequence[str]) -> list[tuple[str, str]]:
    """``[(host, port), ...]`` from ``--out host:port,...`` (``-o`` too).

    Example::

        >>> tcp_parse_output_addrs(["--out", "127.0.0.1:7002"])
        [('127.0.0.1', '7002')]
    """
    found = [_split_host_port(item, "--out")
             for value in _flag_values(args, "--out", "-o") for item in filter(None, value.split(","))]
    if not found:
        raise WallarooParameterError("--out is required: --out host:port[,host:port...]")
    return found


def nanoseconds(x: int) -> int:
    """``x`` nanoseconds, in nanoseconds."""
    return int(x)


def microseconds(x: float) -> int:
    """``x`` microseconds in nanoseconds.

    Example::

        >>> microseconds(3)
        3000
    """
    return int(x * 1_000)


def milliseconds(x: float) -> int:
    """``x`` milliseconds in nanoseconds."""
    return int(x * 1_000_000)


def seconds(x: float) -> int:
    """``x`` seconds in nanoseconds."""
    return int(x * 1_000_000_000)


def minutes(x: float) -> int:
    """``x`` minutes in nanoseconds."""
    return int(x * 60_000_000_000)


def hours(x: float) -> int:
    """``x`` hours in nanoseconds."""
    return int(x * 3_600_000_000_000)


def dt_to_timestamp(dt: _dt.datetime) -> int:
    """A datetime as integer nanoseconds since the epoch (naive datetimes are taken as UTC).

    Example::

        >>> dt_to_timestamp(_dt.datetime(1970, 1, 1, 0, 0, 1))
        1000000000
    """
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.timezone.utc)
    delta = dt - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def serialize(obj) -> bytes:
    """The default serialization of values and state: pickle (protocol 5).

    Example::

        >>> deserialize(serialize({"a": 1}))
        {'a': 1}
    """
    return pickle.dumps(obj, protocol=5)


def deserialize(data: bytes):
    """The inverse of ``serialize``."""
    return pickle.loads(data)
