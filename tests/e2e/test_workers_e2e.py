"""End-to-end tests of ``wallaroo-run --workers N``: a supervisor and N local worker processes,
driven as a user drives them (real processes and sockets, 127.0.0.1 only).

- The word count, alphabet and market spread examples on 1, 2, 3 and 4 workers, fed over
  several sender connections: the final result of every key equals the plain-Python model of
  tests/e2e/test_examples.py (so it is the same for every worker count), and per key the
  outputs come in the order the key's inputs were processed.
- tests/apps/wr_workers_app.py apps, which tag their output with the pid of the process that
  ran a stage: a stage right after key_by runs on the worker owning the key (the even,
  contiguous key-group ranges of wallaroo.runtime.placement), every message exactly once;
  a stage before key_by shows that both workers accept connections on the shared port.
- File sources and sinks: a text file is split among the workers by byte range (every line
  read once, ``out.txt.part-INDEX`` per worker); a framed file is shared frame by frame.
- A worker killed with SIGKILL stops the run (exit 1, the worker named, no process left).
- ``--external``: ``wallaroo cluster status|partitions|state-entities|shutdown``.
- ``--stats-file``: counts merged over the workers, and one summary per worker.

Across keys the engine promises no order, so outputs are compared per key and as multisets.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from harness import RUN_TIMEOUT, App, Harness, split_frames
from support.net import HOST, frame, free_port
from support.processes import STARTUP_RE, WALLAROO, WALLAROO_RUN, Proc, app_env
from test_examples import (ORDER_RESULT, WORD_COUNT_TEXT, check_market_reference, file_lines,
                           ref_alphabet, ref_market_spread, ref_word_count, text_lines)
from wallaroo._core.hashing import DEFAULT_KEY_GROUPS, key_group
from wallaroo.runtime.placement import Placement

pytestmark = pytest.mark.timeout(60)

WORKER_COUNTS = [1, 2, 3, 4]
SENDERS = 4                 # sender connections per TCP source in the example runs
EXIT_TIMEOUT = 15.0         # seconds for the supervisor to exit once its run is over

# the end of the supervisor's startup line: "| N workers (pids a, b, c)"
WORKERS_RE = re.compile(r"\| (?P<count>\d+) workers \(pids (?P<pids>\d+(?:, \d+)*)\)$")


# ---------------------------------------------------------------------------------------------
# helpers

def worker_pids(startup_line: str, count: int) -> list[int]:
    """The worker pids the supervisor's startup line names, in worker-index order."""
    match = WORKERS_RE.search(startup_line)
    assert match, f"no '| {count} workers (pids ...)' at the end of the startup line:\n{startup_line}"
    pids = [int(pid) for pid in match["pids"].split(", ")]
    assert int(match["count"]) == count == len(pids) == len(set(pids)), startup_line
    return pids


def owner(key, count: int) -> int:
    """The index of the worker that owns ``key`` among ``count`` (default key groups)."""
    table = Placement(0, count, key_groups=DEFAULT_KEY_GROUPS).routing_table()
    return table.owner(key_group(key, DEFAULT_KEY_GROUPS))


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def start_app(harness: Harness, target: str, sources: list[str], out_port: int, workers: int,
              *, example: str | None = None, extra: list[str] = ()) -> App:
    """``wallaroo-run`` of an example (``example``: in its folder) or of a tests/apps target
    (in tmp_path, tests/apps on PYTHONPATH), with ``--workers N``."""
    engine_args = ["--workers", str(workers), *extra]
    if example is not None:
        return harness.app(example, target, sources, out_port, extra_engine_args=engine_args)
    return harness.app("", target, sources, out_port, cwd=harness.tmp_path, env=app_env(),
                       extra_engine_args=engine_args)


def pids_of(app: App, workers: int) -> list[int]:
    """The processes that run the app's stages: the workers, or wallaroo-run itself alone."""
    if workers == 1:
        assert not WORKERS_RE.search(app.startup_line), app.startup_line
        return [app.proc.pid]
    pids = worker_pids(app.startup_line, workers)
    assert app.proc.pid not in pids, "the supervisor is not one of its workers"
    return pids


def send_files(harness: Harness, port: int, paths: list[Path], binary: bool = False) -> None:
    """``wallaroo send`` of every file at once, one connection each; each must exit 0."""
    procs = [harness.start("wallaroo send", [WALLAROO, "send", "--host", f"{HOST}:{port}",
                                             "--file", str(path), "--batch-size", "50",
                                             *(["--binary"] if binary else [])])
             for path in paths]
    for proc in procs:
        code = proc.wait(RUN_TIMEOUT)
        assert code == 0, f"wallaroo send exited with {code}\n{proc.describe()}"


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), "utf-8")
    return path


def whole_frames(data: bytes) -> list[bytes]:
    """The payloads of the complete u32-BE frames at the start of ``data`` (a file still being
    written may end inside a frame)."""
    payloads, pos = [], 0
    while len(data) - pos >= 4:
        end = pos + 4 + int.from_bytes(data[pos:pos + 4], "big")
        if end > len(data):
            break
        payloads.append(data[pos + 4:end])
        pos = end
    return payloads


def wait_for(condition, what: str, proc: Proc, timeout: float = RUN_TIMEOUT):
    """Poll ``condition()`` until it returns a true value (returned); fail after ``timeout``
    seconds or when ``proc`` (the app) has ended."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"the app ended while waiting for {what}\n{proc.describe()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s\n{proc.describe()}"
        time.sleep(0.02)


def finish_run(app: App, receiver) -> bytes:
    """SIGTERM the app (exit 0 expected), then stop the receiver; what it received."""
    assert app.stop() == 0, app.proc.describe()
    assert "not fully delivered" not in app.proc.stderr, app.proc.describe()
    return receiver.stop()


def per_key(lines: list[str], sep: str) -> dict[str, list[int]]:
    """``"KEY<sep>N"`` lines as {key: [N, ...]} in output order."""
    out: dict[str, list[int]] = defaultdict(list)
    for line in lines:
        key, _, value = line.rpartition(sep)
        out[key].append(int(value))
    return dict(out)


#: example -> {worker count: final result per key}, to compare every worker count with 1
FINAL: dict[str, dict[int, dict]] = defaultdict(dict)


def same_as_other_counts(example: str, workers: int, final: dict) -> None:
    FINAL[example][workers] = final
    for other, result in FINAL[example].items():
        assert result == final, f"{example}: {workers} workers and {other} differ"


# ---------------------------------------------------------------------------------------------
# 1. the examples on 1-4 workers

@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_word_count_on_workers(harness, tmp_path, workers):
    lines = file_lines(WORD_COUNT_TEXT) * 2
    model = ref_word_count(lines)
    totals = {word: counts[-1] for word, counts in per_key(model, " => ").items()}
    assert len(model) == 964 and len(totals) > 100

    files = [write_lines(tmp_path / f"lines-{i}.txt", lines[i::SENDERS]) for i in range(SENDERS)]
    receiver = harness.receiver(expect=None)
    app = start_app(harness, "word_count", ["Split and Count"], receiver.port, workers,
                    example="word_count")
    pids_of(app, workers)
    send_files(harness, app.sources["Split and Count"], files)
    receiver.wait_for_lines(len(model))
    got = text_lines(finish_run(app, receiver))

    assert len(got) == len(model)
    counts = per_key(got, " => ")
    # every word counted as often as in the model, each running total exactly once and in order
    assert {word: len(seen) for word, seen in counts.items()} == totals
    assert all(seen == list(range(1, len(seen) + 1)) for seen in counts.values()), counts
    same_as_other_counts("word_count", workers, {word: seen[-1] for word, seen in counts.items()})


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_alphabet_on_workers(harness, example, tmp_path, workers):
    gen = example("alphabet", "gen_votes")
    pairs = gen.generate(count=1200, seed=42)
    model = per_key(ref_alphabet(pairs), " => ")
    votes: dict[str, list[int]] = defaultdict(list)
    for letter, n in pairs:
        votes[letter].append(n)
    assert len(model) == 26

    files = []
    for i in range(SENDERS):
        files.append(tmp_path / f"votes-{i}.msg")
        files[-1].write_bytes(gen.to_frames(pairs[i::SENDERS]))
    receiver = harness.receiver(expect=None)
    app = start_app(harness, "alphabet", ["Alphabet Votes"], receiver.port, workers,
                    example="alphabet")
    pids_of(app, workers)
    send_files(harness, app.sources["Alphabet Votes"], files, binary=True)
    receiver.wait_for_lines(len(pairs))
    got = per_key(text_lines(finish_run(app, receiver)), " => ")

    assert set(got) == set(model)
    for letter, totals in got.items():
        # one running total per vote, the last one the model's; the steps are the letter's votes
        steps = [b - a for a, b in zip([0] + totals, totals)]
        assert sorted(steps) == sorted(votes[letter]), letter
        assert totals[-1] == model[letter][-1], letter
    same_as_other_counts("alphabet", workers, {letter: t[-1] for letter, t in got.items()})


PROBE_ACCOUNT = "PROBE0"


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_market_spread_on_workers(harness, example, tmp_path, workers):
    """Quotes over two connections (each symbol's quotes on one), then orders over several.

    Orders must only go out once every quote has been processed, or the result would depend
    on timing. So each quote connection ends, for every worker, with a quote for a sentinel
    symbol that worker owns; probe orders for the sentinels are rejected with the sentinel's
    quote once it was processed, and a worker processes what one connection sends it in order.
    Probes go out until every sentinel answers; probe results are left out of the comparison.
    """
    gen = example("market_spread", "gen_market")
    market, orders = gen.generate(quotes=600, orders=600, seed=11)
    symbols = sorted({quote[0] for quote in market})
    expected = ref_market_spread([("market", m) for m in market] + [("order", o) for o in orders])
    check_market_reference(expected, orders)

    quote_connections = 2
    sentinels = {}      # symbol -> (bid, offer)
    market_files = []
    for c in range(quote_connections):
        mine = [q for q in market if symbols.index(q[0]) % quote_connections == c]
        data = gen.market_frames(mine[:len(mine) // 2])
        if c == 0:   # an order on the market data source: dropped by its decoder
            data += gen.order_frames([(999999, "STRAY0", mine[0][0], 1, 1.0, 1.0, 0)])
        data += gen.market_frames(mine[len(mine) // 2:])
        candidates = [f"Q{c}{k:02d}" for k in range(100)]
        for w in range(workers):
            symbol = next(s for s in candidates if owner(s, workers) == w)
            sentinels[symbol] = (500.0 + len(sentinels), 501.0 + len(sentinels))  # too wide
            data += gen.market_frames([(symbol, 0, *sentinels[symbol])])
        market_files.append(tmp_path / f"market-{c}.msg")
        market_files[-1].write_bytes(data)
    order_files = []
    for i in range(SENDERS):
        order_files.append(tmp_path / f"orders-{i}.msg")
        order_files[-1].write_bytes(gen.order_frames(orders[i::SENDERS]))

    receiver = harness.receiver(expect=None, framed=True, raw=True)
    app = start_app(harness, "market_spread", ["Market Data", "Orders"], receiver.port, workers,
                    example="market_spread")
    pids_of(app, workers)
    send_files(harness, app.sources["Market Data"], market_files, binary=True)

    def results() -> list[tuple]:
        data = receiver.output.read_bytes() if receiver.output.exists() else b""
        return [ORDER_RESULT.unpack(p) for p in whole_frames(data)]

    probes = 0
    waiting = set(sentinels)
    deadline = time.monotonic() + RUN_TIMEOUT
    while waiting:
        assert time.monotonic() < deadline, f"sentinels never processed: {waiting}"
        ids = {}
        for symbol in sorted(waiting):
            probes += 1
            ids[900000 + probes] = symbol
        with socket.create_connection((HOST, app.sources["Orders"])) as conn:
            conn.sendall(gen.order_frames([(order_id, PROBE_ACCOUNT, symbol, 1, 1.0, 1.0, 0)
                                           for order_id, symbol in ids.items()]))

        def probe_answers():
            answers = [r for r in results() if r[1] in ids]
            return answers if len(answers) == len(ids) else None

        answers = wait_for(probe_answers, "the probe results", app.proc)
        for _side, order_id, _account, _symbol, *_rest, bid, offer, _time in answers:
            if (bid, offer) == sentinels[ids[order_id]]:
                waiting.discard(ids[order_id])
            else:    # the sentinel's quote was not processed yet: nothing before it was
                assert (bid, offer) == (0.0, 0.0), answers

    send_files(harness, app.sources["Orders"], order_files, binary=True)
    wait_for(lambda: len(results()) >= probes + len(expected), "every order result", app.proc)
    data = finish_run(app, receiver)

    got = [ORDER_RESULT.unpack(p) for p in split_frames(data)]
    real = [r for r in got if r[2] != PROBE_ACCOUNT.encode()]
    assert len(got) - len(real) == probes
    assert sorted(real) == sorted(expected)
    final = defaultdict(list)
    for result in real:
        final[result[3]].append(result)
    same_as_other_counts("market_spread", workers, {s: sorted(r) for s, r in final.items()})


# ---------------------------------------------------------------------------------------------
# 2. a stage after key_by runs on the key's owner

def test_stage_after_key_by_runs_on_owner(harness, tmp_path):
    workers, keys, per = 2, 250, 10
    # key k<j> goes over connection j % 2, its messages in sequence order
    files = [write_lines(tmp_path / f"values-{c}.txt",
                         [f"k{j}/{s}" for s in range(per) for j in range(c, keys, 2)])
             for c in range(2)]
    sent = [f"k{j}/{s}" for j in range(keys) for s in range(per)]
    assert len(sent) == 2500

    receiver = harness.receiver(expect=None)
    app = start_app(harness, "wr_workers_app:pids_app", ["values"], receiver.port, workers)
    pids = pids_of(app, workers)
    send_files(harness, app.sources["values"], files)
    receiver.wait_for_lines(len(sent))
    got = [line.split(" ") for line in text_lines(finish_run(app, receiver))]

    values = Counter(value for value, _ingest, _owner in got)
    assert len(got) == len(sent) and values == Counter(sent), "every message exactly once"
    owners = {int(owner_pid) for _v, _i, owner_pid in got}
    ingesters = {int(ingest) for _v, ingest, _o in got}
    assert owners == set(pids), f"stage after key_by ran in {owners}, workers are {pids}"
    assert ingesters <= set(pids)
    by_key: dict[str, set[int]] = defaultdict(set)
    order: dict[str, list[int]] = defaultdict(list)
    for value, _ingest, owner_pid in got:
        key, seq = value.split("/")
        by_key[key].add(int(owner_pid))
        order[key].append(int(seq))
    for key, handled_by in by_key.items():
        assert handled_by == {pids[owner(key, workers)]}, (key, handled_by, pids)
        assert order[key] == list(range(per)), f"{key}: per-key order lost: {order[key]}"


# ---------------------------------------------------------------------------------------------
# 3. every worker accepts connections on the shared port

def test_connections_spread_over_workers(harness):
    workers, per_connection = 2, 20
    receiver = harness.receiver(expect=None)
    app = start_app(harness, "wr_workers_app:pids_app", ["values"], receiver.port, workers)
    pids = pids_of(app, workers)

    accepted_by: dict[int, set[int]] = {}
    expected_lines = 0
    for attempt in range(4):      # the kernel's choice may be lopsided: try more connections
        conns = [socket.create_connection((HOST, app.sources["values"])) for _ in range(8)]
        first = len(accepted_by)
        for i, conn in enumerate(conns):
            with conn:
                conn.sendall(b"".join(frame(f"c{first + i}-{n}") for n in range(per_connection)))
        expected_lines += len(conns) * per_connection
        for i in range(len(conns)):
            accepted_by[first + i] = set()
        receiver.wait_for_lines(expected_lines)
        for line in text_lines(receiver.output.read_bytes()):
            value, ingest, _owner = line.split(" ")
            accepted_by[int(value[1:].split("-")[0])].add(int(ingest))
        if len(set().union(*accepted_by.values())) == workers:
            break
    got = text_lines(finish_run(app, receiver))
    assert len(got) == expected_lines
    # a connection is accepted by one worker, which runs the stage before key_by for all of it
    assert all(len(ingest) == 1 for ingest in accepted_by.values()), accepted_by
    used = set().union(*accepted_by.values())
    assert used == set(pids), (f"after {len(accepted_by)} connections only {used} accepted "
                               f"any; the workers are {pids}")


# ---------------------------------------------------------------------------------------------
# 4. file sources and sinks

def run_bounded(harness: Harness, target: str, workers: int, *args: str) -> tuple[Proc, list[int]]:
    """Run a bounded tests/apps app to its end (exit 0); the Proc and the worker pids."""
    proc = harness.start("wallaroo-run", [WALLAROO_RUN, "--app", target, "--workers", str(workers),
                                          *args], cwd=harness.tmp_path, env=app_env())
    code = proc.wait(RUN_TIMEOUT)
    assert code == 0, proc.describe()
    startup = next((line for line in proc.stderr_lines if STARTUP_RE.search(line)), None)
    assert startup is not None, proc.describe()
    if workers == 1:   # one worker runs in the wallaroo-run process itself
        return proc, [proc.popen.pid]
    return proc, worker_pids(startup, workers)


def test_text_file_split_over_three_workers(harness, tmp_path):
    lines = []
    for i in range(3000):
        if i % 300 == 150:
            lines.append(f"long {i} " + "ż" * 10000)   # 20 KB lines: range edges fall inside some
        else:
            lines.append(f"line {i:05d} " + "x" * (i * 7 % 97) + (" żółw" if i % 11 == 0 else ""))
    data = "\n".join(lines).encode("utf-8")       # the last line has no newline
    source = tmp_path / "in.txt"
    source.write_bytes(data)
    edges = [len(data) * k // 3 for k in (1, 2)]
    assert any(data[edge - 1:edge] != b"\n" for edge in edges), "no range edge inside a line"
    out = tmp_path / "out.txt"

    run_bounded(harness, "wr_workers_app:file_lines_app", 3, "--input", str(source),
                "--output", str(out))

    assert not out.exists(), "with several workers each writes its own part file"
    assert not (tmp_path / "out.txt.part-3").exists()
    parts = [text_lines((tmp_path / f"out.txt.part-{i}").read_bytes()) for i in range(3)]
    assert all(parts), [len(part) for part in parts]
    assert Counter(line for part in parts for line in part) == Counter(lines), "read exactly once"
    # each worker read one contiguous range, in order
    assert parts[0] + parts[1] + parts[2] == lines


def test_framed_file_read_once_over_two_workers(harness, tmp_path):
    """A framed file cannot be cut by byte range; still every frame is read exactly once.

    (The brief this test was written to said one worker reads a framed file; the engine since
    commit 4bb4fae shares it frame by frame: each worker cuts the whole file into frames and
    takes every count-th one from frame INDEX on, per the FileSource docstring.)
    """
    payloads = [f"frame {i} " + "y" * (i % 50) for i in range(600)]
    source = tmp_path / "in.msg"
    source.write_bytes(b"".join(frame(p) for p in payloads))
    out = tmp_path / "out.txt"

    _proc, pids = run_bounded(harness, "wr_workers_app:framed_file_app", 2, "--input", str(source),
                              "--output", str(out))

    assert not out.exists(), "with several workers each writes its own part file"
    parts = [tmp_path / f"out.txt.part-{i}" for i in range(2)]
    tagged = [[line.rsplit(" ", 1) for line in text_lines(part.read_bytes())]
              if part.exists() else [] for part in parts]
    got = [[payload for payload, _pid in part] for part in tagged]
    assert Counter(got[0] + got[1]) == Counter(payloads), "every frame exactly once"
    for index, part in enumerate(tagged):   # a part file holds what its own worker read
        assert {int(pid) for _payload, pid in part} == {pids[index]}, (index, pids)
    assert got == [payloads[0::2], payloads[1::2]], (
        f"frames per worker: {[len(part) for part in got]}; expected frame i on worker i % 2")


# ---------------------------------------------------------------------------------------------
# 5. a worker killed with SIGKILL

def test_sigkilled_worker_stops_the_run(harness, tmp_path):
    workers, victim = 3, 1
    receiver = harness.receiver(expect=None)
    app = start_app(harness, "wr_workers_app:pids_app", ["values"], receiver.port, workers)
    pids = pids_of(app, workers)
    send_files(harness, app.sources["values"],
               [write_lines(tmp_path / "values.txt", [f"v{i}" for i in range(300)])])
    receiver.wait_for_lines(300)       # the run is going

    os.kill(pids[victim], signal.SIGKILL)
    killed = time.monotonic()
    code = app.proc.wait(EXIT_TIMEOUT)
    took = time.monotonic() - killed
    assert code == 1, app.proc.describe()
    assert took < 10.0, f"the supervisor took {took:.1f} s to exit"
    left = [pid for pid in pids if alive(pid)]
    assert not left, f"worker processes still running after the supervisor exited: {left}"
    assert (f"worker worker-{victim} went away (pid {pids[victim]} was killed by SIGKILL); "
            f"stopping the other workers") in app.proc.stderr, app.proc.describe()


# ---------------------------------------------------------------------------------------------
# 6. the external control port

def cluster_command(harness: Harness, command: str, port: int) -> dict:
    proc = harness.start(f"wallaroo cluster {command}",
                         [WALLAROO, "cluster", command, "--external", f"{HOST}:{port}", "--json"])
    code = proc.wait(RUN_TIMEOUT)
    assert code == 0, proc.describe()
    return json.loads(proc.stdout)


def test_external_control_of_three_workers(harness, tmp_path):
    workers, distinct = 3, 300
    words = [f"w{i}" for i in range(distinct) for _ in range(i % 5 + 1)]
    files = [write_lines(tmp_path / f"words-{c}.txt", words[c::3]) for c in range(3)]
    external = free_port()

    receiver = harness.receiver(expect=None)
    app = start_app(harness, "wr_workers_app:count_app", ["words"], receiver.port, workers,
                    extra=["--external", f"{HOST}:{external}"])
    pids = pids_of(app, workers)
    send_files(harness, app.sources["words"], files)
    receiver.wait_for_lines(len(words))
    names = [f"worker-{i}" for i in range(workers)]

    status = cluster_command(harness, "status", external)
    assert sorted(status["worker_names"]) == names and status["worker_count"] == workers, status
    assert status["processing_messages"] is True, status

    partitions = cluster_command(harness, "partitions", external)
    assert partitions["key_groups"] == DEFAULT_KEY_GROUPS
    groups = partitions["workers"]
    assert sorted(groups) == names, partitions
    assert all(groups[name] for name in names), "every worker owns key groups"
    every = [g for name in names for g in groups[name]]
    assert len(every) == len(set(every)) == DEFAULT_KEY_GROUPS, "overlapping or missing groups"
    assert set(every) == set(range(DEFAULT_KEY_GROUPS))
    where = {g: name for name, owned in groups.items() for g in owned}
    keys_on = Counter(where[key_group(f"w{i}", DEFAULT_KEY_GROUPS)] for i in range(distinct))
    assert partitions["state_partitions"] == {"count": dict(keys_on)}, partitions

    entities = cluster_command(harness, "state-entities", external)
    assert entities == {"count": {"workers": dict(keys_on), "total": distinct}}, entities

    reply = cluster_command(harness, "shutdown", external)
    assert reply.get("shutting_down") is True, reply
    code = app.proc.wait(EXIT_TIMEOUT)
    assert code == 0, app.proc.describe()
    assert "not fully delivered" not in app.proc.stderr, app.proc.describe()
    got = per_key(text_lines(receiver.stop()), " ")
    assert got == {f"w{i}": list(range(1, i % 5 + 2)) for i in range(distinct)}
    left = [pid for pid in pids if alive(pid)]
    assert not left, f"worker processes still running after shutdown: {left}"


# ---------------------------------------------------------------------------------------------
# 7. --stats-file

def test_stats_file_merges_workers(harness, tmp_path):
    vocabulary = [f"t{i}" for i in range(40)]
    lines = [" ".join(vocabulary[(i * 7 + j) % 40] for j in range(i % 6 + 1)) for i in range(500)]
    words = [word for line in lines for word in line.split()]
    source = write_lines(tmp_path / "in.txt", lines)
    out, stats_file = tmp_path / "out.txt", tmp_path / "stats.json"

    run_bounded(harness, "wr_workers_app:file_words_app", 2, "--stats-file", str(stats_file),
                "--input", str(source), "--output", str(out))

    parts = [text_lines((tmp_path / f"out.txt.part-{i}").read_bytes()) for i in range(2)]
    output = parts[0] + parts[1]
    assert len(output) == len(words) != len(lines)
    assert {w: c[-1] for w, c in per_key(output, " ").items()} == Counter(words)
    stats = json.loads(stats_file.read_text())
    assert stats["ingested"] == len(lines), stats["ingested"]
    [sink] = stats["sinks"]
    assert sink["messages"] == len(output), sink
    assert stats["exit_code"] == 0
    per_worker = stats["workers"]
    assert len(per_worker) == 2
    assert sorted(w["worker"] for w in per_worker) == ["worker-0", "worker-1"]
    assert all(w["ingested"] > 0 for w in per_worker), "each worker reads its part of the file"
    assert sum(w["ingested"] for w in per_worker) == len(lines)
    assert sum(s["messages"] for w in per_worker for s in w["sinks"]) == len(output)


@pytest.mark.parametrize("workers", [2, 3])
def test_event_time_windows_agree_with_one_worker(harness, tmp_path, workers):
    """Each worker reads a share of the file (later shares run ahead in event time); a window
    follows every worker's instance of the source, so none of a key's events counts as late
    and the windows are those of one worker, and of a plain-Python model."""
    rng = random.Random(5)
    t, lines, model = 0, [], {}
    for _ in range(6000):
        t += rng.randint(0, 3)
        key, value = f"k{rng.randint(0, 30)}", rng.randint(1, 9)
        lines.append(f"{t},{key},{value}")
        start = t // 100 * 100 * 1_000_000
        acc = model.setdefault((key, start, start + 100_000_000), [0, 0])
        acc[0] += value
        acc[1] += 1
    source = write_lines(tmp_path / "events.txt", lines)
    expected = sorted(f"{k},{s},{e},{a[0]},{a[1]}" for (k, s, e), a in model.items())

    outputs = {}
    for count in (1, workers):
        out = tmp_path / f"out{count}.txt"
        proc, _ = run_bounded(harness, "wr_workers_app:windowed_file_app", count,
                              "--input", str(source), "--output", str(out))
        assert "late" not in proc.stderr, proc.describe()
        parts = sorted(tmp_path.glob(f"out{count}.txt*"))
        outputs[count] = sorted(line for p in parts for line in text_lines(p.read_bytes()))
    assert outputs[1] == expected
    assert outputs[workers] == expected


def test_watermarks_through_two_exchanges_lose_nothing(harness, tmp_path):
    """key_by user -> state -> key_by region -> window: a source's watermark reaches the window
    through every worker, so it waits for the slowest (one worker is held back on purpose);
    nothing counts as late and every message is counted, as on one worker."""
    rng = random.Random(9)
    lines, model = [], Counter()
    for t in range(0, 20000):
        region = f"r{rng.randint(0, 3)}"
        lines.append(f"{t},u{rng.randint(0, 400)},{region}")
        model[(region, t // 1000)] += 1
    source = write_lines(tmp_path / "events.txt", lines)
    expected = sorted(f"{r},{s * 10**9},{(s + 1) * 10**9},{n}" for (r, s), n in model.items())
    for count in (1, 2):
        out, stats_file = tmp_path / f"out{count}.txt", tmp_path / f"stats{count}.json"
        run_bounded(harness, "wr_workers_app:two_exchanges_app", count, "--input", str(source),
                    "--output", str(out), "--stats-file", str(stats_file))
        assert json.loads(stats_file.read_text())["late"] == {}
        got = sorted(line for p in tmp_path.glob(f"out{count}.txt*") for line in text_lines(p.read_bytes()))
        assert got == expected, f"{count} worker(s)"


def test_a_window_after_a_window_fires_on_every_worker(harness, tmp_path):
    """Two windows with no exchange between them: the second follows only its own worker's
    instance of the first, so it fires (with the same results as on one worker)."""
    rng = random.Random(13)
    t, lines = 0, []
    for _ in range(4000):
        t += rng.randint(0, 2)
        lines.append(f"{t},k{rng.randint(0, 20)},{rng.randint(1, 9)}")
    source = write_lines(tmp_path / "events.txt", lines)
    outputs = {}
    for count in (1, 2):
        out = tmp_path / f"out{count}.txt"
        run_bounded(harness, "wr_workers_app:window_after_window_app", count, "--input",
                    str(source), "--output", str(out))
        outputs[count] = sorted(line for p in tmp_path.glob(f"out{count}.txt*")
                                for line in text_lines(p.read_bytes()))
    assert outputs[1], "the second window fired on one worker"
    assert sum(int(line.split(",")[-1]) for line in outputs[1]) == sum(
        int(line.split(",")[2]) for line in lines)
    assert outputs[2] == outputs[1]


def test_stdout_of_several_workers_keeps_lines_whole(harness, tmp_path):
    lines = [f"line-{i:07d}-" + "abcdefghijklmnopqrstuvwxyz" * (1 + i % 5) + "-end"
             for i in range(60000)]
    source = write_lines(tmp_path / "in.txt", lines)
    proc, _ = run_bounded(harness, "wr_workers_app:stdout_lines_app", 2, "--input", str(source))
    printed = proc.stdout.decode().split("\n")
    assert printed[-1] == ""
    assert sorted(printed[:-1]) == sorted(lines)


def test_two_runs_cannot_share_a_fixed_source_port(harness, tmp_path):
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    first = harness.start("wallaroo-run", [WALLAROO_RUN, "--app", "wr_workers_app:pids_app",
                                           "--workers", "2", "--in", f"values@{HOST}:{port}",
                                           "--out", f"{HOST}:1"], cwd=tmp_path, env=app_env())
    first.wait_stderr(STARTUP_RE)
    second = harness.start("wallaroo-run", [WALLAROO_RUN, "--app", "wr_workers_app:pids_app",
                                            "--workers", "2", "--in", f"values@{HOST}:{port}",
                                            "--out", f"{HOST}:1"], cwd=tmp_path, env=app_env())
    assert second.wait(RUN_TIMEOUT) == 2, second.describe()
    assert f"cannot listen on {HOST}:{port}" in second.stderr, second.describe()
    assert first.poll() is None


def test_a_failing_stage_on_one_worker_stops_them_all(harness, tmp_path):
    """--on-error fail: the worker whose stage raised stops with the stage, the input and its
    traceback; the coordinator stops the other; the run exits 1 and no worker is left."""
    lines = [f"w{i} x{i % 7}" for i in range(3000)]
    lines[1500] = "boom"
    source = write_lines(tmp_path / "in.txt", lines)
    proc = harness.start("wallaroo-run", [WALLAROO_RUN, "--app", "wr_workers_app:failing_app",
                                          "--workers", "2", "--input", str(source), "--output",
                                          str(tmp_path / "out.txt")], cwd=tmp_path, env=app_env())
    assert proc.wait(RUN_TIMEOUT) == 1, proc.describe()
    assert "boom is not a word" in proc.stderr, proc.describe()
    assert re.search(r"worker worker-\d failed: StageFailed", proc.stderr), proc.describe()
    assert "refuse boom" in proc.stderr, proc.describe()
