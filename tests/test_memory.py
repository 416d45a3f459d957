"""Memory stays bounded at a steady input rate: nothing in the engine grows per message.

A real ``wallaroo-run`` of the word count example takes 20,000 words a second over TCP for
about 12 seconds; its resident memory is read with psutil after a warm-up and at the end. A
leak of even 30 bytes a message would add more than the bound allows.
"""
from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import psutil
import pytest

from support.net import HOST, frame

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RATE_LINES = 2_000          # lines a second, 10 words each
WARM_UP_S, MEASURE_S = 4.0, 8.0
BOUND_BYTES = 4 * 1024 * 1024

pytestmark = pytest.mark.timeout(90)


def test_rss_stays_flat_at_a_steady_rate(wallaroo_run, listener):
    sink = listener()
    proc = wallaroo_run("--application-module", "word_count", "--in",
                        "Split and Count@127.0.0.1:0", "--out", sink.address,
                        cwd=EXAMPLES / "word_count")
    _, ports = proc.startup()
    rng = random.Random(7)
    vocabulary = [f"word{i}" for i in range(1_000)]
    lines = [frame(" ".join(rng.choice(vocabulary) for _ in range(10))) for _ in range(4_000)]
    engine = psutil.Process(proc.pid)
    sent = 0
    samples = {}
    with socket.create_connection((HOST, ports["Split and Count"])) as conn:
        start = time.monotonic()
        tick = 0.02
        per_tick = int(RATE_LINES * tick)
        while (elapsed := time.monotonic() - start) < WARM_UP_S + MEASURE_S:
            chunk = b"".join(lines[(sent + i) % len(lines)] for i in range(per_tick))
            conn.sendall(chunk)
            sent += per_tick
            if "warm" not in samples and elapsed >= WARM_UP_S:
                samples["warm"] = engine.memory_info().rss
            time.sleep(max(0.0, start + (sent / RATE_LINES) - time.monotonic()))
        samples["end"] = engine.memory_info().rss
    received = sink.wait_for(lambda data: data.count(b"\n") >= sent * 10, timeout=30)
    assert received.count(b"\n") == sent * 10, proc.describe()
    grown = samples["end"] - samples["warm"]
    print(f"RSS {samples['warm'] / 1e6:.1f} MB after warm-up, grew {grown / 1e6:.2f} MB")
    assert grown < BOUND_BYTES, (
        f"RSS grew by {grown / 1e6:.1f} MB over {MEASURE_S:.0f} s at {RATE_LINES * 10} words/s "
        f"({grown / (RATE_LINES * 10 * MEASURE_S):.1f} bytes a word)")
