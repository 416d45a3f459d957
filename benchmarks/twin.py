"""The plain-loop twin of the files and TCP modes, as a process of its own (like ``wallaroo-run``).

    python -m benchmarks.twin WORKLOAD --file SOURCE=PATH ... --output PATH
    python -m benchmarks.twin WORKLOAD --file SOURCE=PATH ... --tcp PORT

With ``--output`` it reads the framed input files 256 KiB at a time (sources in turn), cuts the
frames in Python, decodes, runs the plain loop, encodes, and writes each read's output to the
file (flushed per read, fsynced at the end), as ``wallaroo-run`` with file sources and sink does.
With ``--tcp`` it first loads the files into memory (not timed), connects to 127.0.0.1:PORT, and
writes each read's output to that socket. It prints one JSON line: ``seconds`` (files: open to
fsync), ``started`` (``time.monotonic()`` when processing began; the receiver times the end),
``output_bytes`` and ``peak_rss`` (this process's VmHWM).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import connect, proc_status  # noqa: E402
from benchmarks.workloads import find  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.twin", description=__doc__)
    parser.add_argument("workload")
    parser.add_argument("--file", action="append", required=True, metavar="SOURCE=PATH")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--output")
    where.add_argument("--tcp", type=int, metavar="PORT")
    args = parser.parse_args(argv)
    work = find(args.workload)
    paths = dict(item.split("=", 1) for item in args.file)
    written = 0
    if args.output is not None:
        started = time.monotonic()
        with open(args.output, "wb") as out:
            def write(data: bytes) -> None:
                nonlocal written
                out.write(data)
                out.flush()
                written += len(data)
            work.plain_wire(work.file_chunks(paths), write)
            os.fsync(out.fileno())
        seconds = time.monotonic() - started
    else:
        wire = {name: Path(path).read_bytes() for name, path in paths.items()}
        sock = connect(args.tcp)

        def send(data: bytes) -> None:
            nonlocal written
            sock.sendall(data)
            written += len(data)
        started = time.monotonic()
        work.plain_wire(work.wire_chunks(wire), send)
        sock.shutdown(socket.SHUT_WR)
        seconds = time.monotonic() - started
        sock.close()
    print(json.dumps({"seconds": seconds, "started": started, "output_bytes": written,
                      "peak_rss": proc_status().get("VmHWM", 0)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
