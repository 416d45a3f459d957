"""Send the lines of a file to a connector source, each as one MESSAGE (id = line number).

``python -m wallaroo.experimental.send_lines --host H --port P --cookie C --file F
[--stream-name NAME] [--instance NAME] [--rate N] [--no-wait-acks]``

The stream is NOTIFYed with "nothing yet"; the worker's NOTIFY_ACK says which line it saw
last, and sending resumes after it, so a killed and restarted client resends only what the
worker has not seen. Once every line is sent (and, unless ``--no-wait-acks``, acknowledged)
it sends EOS and exits 0.

Example::

    >>> list(numbered_lines(__import__("io").BytesIO(b"a\\nb\\r\\nc"), 2))
    [(2, b'b'), (3, b'c')]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from wallaroo.connectors.connector_wire import NOTHING, VERSION
from wallaroo.experimental.source_client import AtLeastOnceSourceConnector, stream_id_for

log = logging.getLogger("wallaroo.send_lines")


def numbered_lines(handle, first: int = 1):
    """(line number, line without its newline) for the lines of a binary file, from ``first``.

    Example::

        >>> import io; list(numbered_lines(io.BytesIO(b"x\\n\\ny\\n")))
        [(1, b'x'), (2, b''), (3, b'y')]
    """
    for number, line in enumerate(handle, 1):
        if number < first:
            continue
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield number, line


async def send_file(args) -> int:
    """Send the file as ``args`` say (see the module doc); the exit code.

    Example::

        >>> import asyncio, types
        >>> asyncio.run(send_file(types.SimpleNamespace(file="/no/such/file")))
        2
    """
    if not os.path.isfile(args.file):
        log.error("no such file: %s", args.file)
        return 2
    name = args.stream_name or os.path.basename(args.file)
    sid = stream_id_for(name)
    client = AtLeastOnceSourceConnector(VERSION, args.cookie, "send_lines", args.instance,
                                        args.host, args.port)
    await client.connect()
    for _ in range(100):
        ack = await client.notify(sid, name, NOTHING)
        if ack.ok:
            break
        log.warning("stream %r is open on another connection; retrying", name)
        await asyncio.sleep(0.1)
    else:
        log.error("stream %r stayed open on another connection; giving up", name)
        client.close()
        return 1
    first = 1 if ack.point_of_ref == NOTHING else ack.point_of_ref + 1
    log.info("stream %r (id %d): the worker has seen %s; sending from line %d", name, sid,
             "nothing" if first == 1 else f"up to line {first - 1}", first)
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = last = 0
    with open(args.file, "rb") as handle:
        for number, line in numbered_lines(handle, first):
            await client.send(sid, number, line)
            sent += 1
            last = number
            if args.rate:
                ahead = started + sent / args.rate - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
    log.info("sent %d lines (last line %d)", sent, last)
    if last and not args.no_wait_acks:
        await client.wait_acked(sid, last)
        log.info("the worker acknowledged every line")
    await client.end_of_stream(sid)
    log.info("sent EOS; done")
    client.close()
    return 0


def main(argv=None) -> int:
    """Parse the command line and send the file.

    Example::

        >>> main(["--host", "127.0.0.1"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    parser = argparse.ArgumentParser(prog="python -m wallaroo.experimental.send_lines",
                                     description="Send a file's lines to a connector source.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cookie", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--stream-name", help="default: the file's name")
    parser.add_argument("--instance", default="send_lines")
    parser.add_argument("--rate", type=float, default=0, help="lines per second (0: no limit)")
    parser.add_argument("--no-wait-acks", action="store_true",
                        help="send EOS without waiting for the worker's acknowledgements")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="send_lines: %(message)s")
    return asyncio.run(send_file(args))


if __name__ == "__main__":
    sys.exit(main())
