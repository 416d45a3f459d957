"""End-to-end and in-process tests of the example applications in examples/.

Every test computes what the application must output with a plain-Python
implementation of the same logic over the same input, and compares the real
output with it exactly. One worker and one sender connection per source make
the output order deterministic, so sequences are compared, not sets.

The end-to-end tests run the real processes (see harness.py): ``wallaroo
receive`` -> ``wallaroo-run`` -> ``wallaroo send``; the in-process tests use
``wallaroo.testing.run`` with decoded values in place of the sources.
"""
from __future__ import annotations

import os
import random
import re
import string
import struct
import time
from pathlib import Path
from collections.abc import Callable

import pytest

import wallaroo
import wallaroo.testing
from harness import EXAMPLES, START_TIMEOUT, STOP_TIMEOUT, WALLAROO_RUN, App, split_frames
from support.net import HOST, free_port

pytestmark = pytest.mark.timeout(90)

IN_PROCESS_TIMEOUT = 30.0


def tcp_args(*sources: str) -> list[str]:
    """Application args for wallaroo.testing.run (the apps parse --in/--out themselves)."""
    return ["--in", ",".join(f"{name}@{HOST}:0" for name in sources), "--out", f"{HOST}:0"]


def file_lines(path: Path) -> list[str]:
    """The messages ``wallaroo send --file`` sends for a text file: one per line."""
    lines = path.read_text("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def text_lines(data: bytes) -> list[str]:
    text = data.decode("utf-8")
    assert text.endswith("\n") or not text, f"output does not end with a newline: {text[-200:]!r}"
    return text.split("\n")[:-1] if text else []


def run_e2e(harness, example: str, sends: list[tuple[str, Path]], expected: list, *,
            binary: bool = False, framed: bool = False, raw: bool = False,
            decode: Callable[[bytes], list] = text_lines, pause: float = 0.0,
            **app_kwargs) -> App:
    """The whole path, as a user runs it: ``wallaroo receive --expect len(expected)``,
    ``wallaroo-run`` of examples/<example>/<example>.py (``app_kwargs`` go to
    :meth:`Harness.app`), then ``wallaroo send`` of each ``(source, file)`` in turn, ``pause``
    seconds apart. What arrives, through ``decode``, must equal ``expected``, and wallaroo-run
    must exit 0 on SIGTERM. Returns the App."""
    receiver = harness.receiver(expect=len(expected), framed=framed, raw=raw)
    app = harness.app(example, example, [source for source, _ in sends], receiver.port,
                      **app_kwargs)
    for i, (source, path) in enumerate(sends):
        if i:
            time.sleep(pause)
        harness.send(app.sources[source], path, binary=binary)
    assert decode(receiver.wait_done()) == expected
    assert app.stop() == 0, app.proc.describe()
    return app


# ---------------------------------------------------------------------------------------------
# word count

WORD_COUNT_TEXT = EXAMPLES / "word_count" / "count_this.txt"


def ref_word_count(lines: list[str]) -> list[str]:
    """Every word (lowercased, outer punctuation stripped) with its running count."""
    totals: dict[str, int] = {}
    out = []
    for line in lines:
        for token in line.lower().split():
            word = token.strip(string.punctuation)
            if word:
                totals[word] = totals.get(word, 0) + 1
                out.append(f"{word} => {totals[word]}")
    return out


def test_word_count_reference_is_meaningful():
    expected = ref_word_count(file_lines(WORD_COUNT_TEXT))
    assert len(expected) == 482
    assert "congress => 1" in expected and "shall => 2" in expected
    # punctuation is stripped and case folded: "Congress" and "religion," count as plain words
    assert all(re.fullmatch(r"(?:[a-z0-9][a-z0-9'-]*[a-z0-9]|[a-z0-9]) => \d+", line) for line in expected)


def run_word_count(harness, original_style: bool, **app_kwargs) -> None:
    expected = ref_word_count(file_lines(WORD_COUNT_TEXT))
    app = run_e2e(harness, "word_count", [("Split and Count", WORD_COUNT_TEXT)], expected,
                  original_style=original_style, **app_kwargs)
    assert app.name == "Word Count Application"


def test_word_count_e2e(harness):
    run_word_count(harness, original_style=False)


def test_word_count_original_invocation(harness, tmp_path):
    """``--application-module`` found through PYTHONPATH, run from another directory."""
    env = dict(os.environ, PYTHONPATH=str(EXAMPLES / "word_count"))
    run_word_count(harness, original_style=True, cwd=tmp_path, env=env)


def test_word_count_original_full_command_line(harness, tmp_path):
    """The whole machida command line of the original README, Pony flags included."""
    env = dict(os.environ, PYTHONPATH=str(EXAMPLES / "word_count"))
    engine_args = [
        "--metrics", f"{HOST}:{free_port()}",
        "--control", f"{HOST}:{free_port()}",
        "--data", f"{HOST}:{free_port()}",
        "--name", "initializer",
        "--external", f"{HOST}:{free_port()}",
        "--cluster-initializer",
        "--ponythreads=1", "--ponynoblock",
    ]
    run_word_count(harness, original_style=True, cwd=tmp_path, env=env, extra_engine_args=engine_args)


def test_word_count_in_process(example):
    mod = example("word_count", "word_count")
    lines = file_lines(WORD_COUNT_TEXT)
    [out] = wallaroo.testing.run(mod, {"Split and Count": lines},
                                 timeout=IN_PROCESS_TIMEOUT, args=tcp_args("Split and Count"))
    assert [f"{v.word} => {v.count}" for v in out] == ref_word_count(lines)


# ---------------------------------------------------------------------------------------------
# alphabet

def ref_alphabet(pairs: list[tuple[str, int]]) -> list[str]:
    totals: dict[str, int] = {}
    out = []
    for letter, votes in pairs:
        totals[letter] = totals.get(letter, 0) + votes
        out.append(f"{letter} => {totals[letter]}")
    return out


def test_alphabet_e2e(harness, example, tmp_path):
    gen = example("alphabet", "gen_votes")
    pairs = gen.generate(count=1000, seed=42)
    assert pairs == gen.generate(count=1000, seed=42), "the generator must be deterministic"
    assert len({letter for letter, _ in pairs}) == 26
    data_file = tmp_path / "votes.msg"
    data_file.write_bytes(gen.to_frames(pairs))
    # the file really holds 5-byte frames of (letter, u32 votes)
    assert [struct.unpack(">sI", p) for p in split_frames(data_file.read_bytes())][:3] == \
        [(letter.encode(), votes) for letter, votes in pairs[:3]]

    run_e2e(harness, "alphabet", [("Alphabet Votes", data_file)], ref_alphabet(pairs), binary=True)


def test_alphabet_in_process(example):
    mod = example("alphabet", "alphabet")
    pairs = example("alphabet", "gen_votes").generate(count=500, seed=3)
    decoded = [mod.Votes(letter, votes) for letter, votes in pairs]
    [out] = wallaroo.testing.run(mod, {"Alphabet Votes": decoded},
                                 timeout=IN_PROCESS_TIMEOUT, args=tcp_args("Alphabet Votes"))
    assert [f"{v.letter} => {v.votes}" for v in out] == ref_alphabet(pairs)


# ---------------------------------------------------------------------------------------------
# reverse

REVERSE_WORDS = EXAMPLES / "reverse" / "words.txt"


def test_reverse_e2e(harness):
    lines = file_lines(REVERSE_WORDS)
    expected = [line[::-1] for line in lines]
    assert any(not line.isascii() for line in lines)    # the UTF-8 path is exercised
    run_e2e(harness, "reverse", [("Reverse", REVERSE_WORDS)], expected)


def test_reverse_in_process(example):
    mod = example("reverse", "reverse")
    lines = file_lines(REVERSE_WORDS) + ["", "ab", "żółw"]
    [out] = wallaroo.testing.run(mod, {"Reverse": lines},
                                 timeout=IN_PROCESS_TIMEOUT, args=tcp_args("Reverse"))
    assert out == [line[::-1] for line in lines]


# ---------------------------------------------------------------------------------------------
# celsius

def ref_fahrenheit(readings: list[float]) -> list[float]:
    return [c * 1.8 + 32 for c in readings]


def test_celsius_e2e(harness, example, tmp_path):
    gen = example("celsius", "gen_celsius")
    readings = gen.generate(count=1000, seed=7)
    data_file = tmp_path / "celsius.msg"
    data_file.write_bytes(gen.to_frames(readings))
    expected = [f"{f:.4f}" for f in ref_fahrenheit(readings)]
    run_e2e(harness, "celsius", [("Celsius", data_file)], expected, binary=True, framed=True)


def test_celsius_in_process(example):
    mod = example("celsius", "celsius")
    readings = example("celsius", "gen_celsius").generate(count=300, seed=1) + [-40.0, 0.0, 100.0]
    [out] = wallaroo.testing.run(mod, {"Celsius": readings},
                                 timeout=IN_PROCESS_TIMEOUT, args=tcp_args("Celsius"))
    assert out == ref_fahrenheit(readings)
    assert out[-3:] == [-40.0, 32.0, 212.0]


# ---------------------------------------------------------------------------------------------
# market spread

ORDER_RESULT = struct.Struct(">BI6s4sddddQ")


def ref_market_spread(events) -> list[tuple]:
    """``events``: ("market", (symbol, time, bid, offer)) or ("order", (id, account, symbol,
    side, quantity, price, time)) in processing order. Returns the rejected orders as the
    tuples ``ORDER_RESULT`` unpacks to."""
    quotes: dict[str, tuple[float, float]] = {}
    rejected = []
    for kind, fields in events:
        if kind == "market":
            symbol, _time, bid, offer = fields
            quotes[symbol] = (bid, offer)
            continue
        order_id, account, symbol, side, quantity, price, transact_time = fields
        if symbol in quotes:
            bid, offer = quotes[symbol]
            spread, mid = offer - bid, (bid + offer) / 2.0
            reject = spread >= 0.05 or spread >= mid * 0.05
        else:
            bid, offer, reject = 0.0, 0.0, True
        if reject:
            rejected.append((side, order_id, account.encode(), symbol.encode().ljust(4),
                             quantity, price, bid, offer, transact_time))
    return rejected


def check_market_reference(expected, orders):
    assert 0 < len(expected) < len(orders), "the data must have both accepted and rejected orders"
    # some rejections come only from the 5%-of-mid rule (penny stocks)
    assert any(offer - bid < 0.05 for *_, bid, offer, _t in expected)


def test_market_spread_e2e(harness, example, tmp_path):
    gen = example("market_spread", "gen_market")
    market, orders = gen.generate(quotes=2000, orders=2000, seed=11)
    market_file = tmp_path / "market.msg"
    orders_file = tmp_path / "orders.msg"
    # the middle of the quotes holds a frame with the wrong type byte (an order): it is dropped
    stray_order = gen.order_frames([(999999, "STRAY0", market[0][0], 1, 1.0, 1.0, 0)])
    market_file.write_bytes(gen.market_frames(market[:1000]) + stray_order + gen.market_frames(market[1000:]))
    orders_file.write_bytes(gen.order_frames(orders))

    expected = ref_market_spread([("market", m) for m in market] + [("order", o) for o in orders])
    check_market_reference(expected, orders)

    def order_results(data: bytes) -> list[tuple]:
        payloads = split_frames(data)
        assert {len(p) for p in payloads} == {ORDER_RESULT.size}
        return [ORDER_RESULT.unpack(p) for p in payloads]

    # quotes first, then orders (as the original test did): the pause gives the engine a
    # moment to take in every quote before orders arrive on the other connection
    run_e2e(harness, "market_spread", [("Market Data", market_file), ("Orders", orders_file)],
            expected, binary=True, framed=True, raw=True, decode=order_results, pause=1.0)


def test_market_spread_in_process(example):
    """Quotes and orders interleaved in one known order, fed through the "Market Data" source
    (the decoded values carry their own type), so updates after orders are checked too."""
    mod = example("market_spread", "market_spread")
    market, orders = example("market_spread", "gen_market").generate(quotes=1000, orders=1000, seed=5)
    rng = random.Random(99)
    events, m, o = [], 0, 0
    events += [("market", q) for q in market[:5]]   # a few symbols are still unquoted afterwards
    m = 5
    while m < len(market) or o < len(orders):
        if o >= len(orders) or (m < len(market) and rng.random() < 0.5):
            events.append(("market", market[m]))
            m += 1
        else:
            events.append(("order", orders[o]))
            o += 1
    decoded = [mod.MarketData(*fields) if kind == "market" else mod.Order(*fields) for kind, fields in events]
    expected = ref_market_spread(events)
    check_market_reference(expected, orders)
    assert any(bid == offer == 0.0 for *_, bid, offer, _t in expected), "some orders precede any quote"

    [out] = wallaroo.testing.run(mod, {"Market Data": decoded, "Orders": []},
                                 timeout=IN_PROCESS_TIMEOUT, args=tcp_args("Market Data", "Orders"))
    got = [(r.order.side, r.order.order_id, r.order.account.encode(), r.order.symbol.encode().ljust(4),
            r.order.quantity, r.order.price, r.bid, r.offer, r.order.transact_time) for r in out]
    assert got == expected
    # and the encoder writes exactly the documented frame
    frame = mod.encode_order_result.encode(out[0])
    assert frame[:4] == struct.pack(">I", ORDER_RESULT.size) and ORDER_RESULT.unpack(frame[4:]) == expected[0]


# ---------------------------------------------------------------------------------------------
# alerts (generator sources)

def transactions(count: int, seed: int = 1) -> list[tuple[int, int]]:
    """The (user, amount) stream the alerts generator is documented to produce:
    64-bit LCG with Knuth's MMIX constants; user = bits 20.. mod 5, amount = bits 33.. mod 2500 - 1250."""
    state, out = seed, []
    for _ in range(count):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(((state >> 20) % 5, (state >> 33) % 2500 - 1250))
    return out


def ref_alerts_stateless(txs) -> list[str]:
    out = []
    for user, amount in txs:
        if amount > 1000:
            out.append(f"Deposit Alert for user {user}: {amount}")
        elif amount < -1000:
            out.append(f"Withdrawal Alert for user {user}: {amount}")
    return out


def ref_alerts_stateful(txs) -> list[str]:
    totals: dict[int, int] = {}
    beyond: dict[int, int] = {}     # user -> +1 above 2000, -1 below -2000, 0 between
    out = []
    for user, amount in txs:
        total = totals[user] = totals.get(user, 0) + amount
        side = 1 if total > 2000 else -1 if total < -2000 else 0
        if side and side != beyond.get(user, 0):
            out.append(f"{'Deposit' if side > 0 else 'Withdrawal'} Alert for user {user}: total {total}")
        beyond[user] = side
    return out


ALERTS = [("alerts_stateless", ref_alerts_stateless, "Alerts (stateless)"),
          ("alerts_stateful", ref_alerts_stateful, "Alerts (stateful)")]
ALERTS_FOLDER = "alerts"


@pytest.mark.parametrize("module, reference, app_name", ALERTS, ids=[a[0] for a in ALERTS])
def test_alerts_e2e_bounded(harness, module, reference, app_name):
    """``--count`` bounds the generator source, so the run ends by itself with exit 0."""
    expected = reference(transactions(1000, seed=5))
    assert 10 < len(expected) < 1000
    assert any(a.startswith("Deposit") for a in expected) and any(a.startswith("Withdrawal") for a in expected)
    receiver = harness.receiver(expect=len(expected))
    app = harness.app(ALERTS_FOLDER, module, [], receiver.port, app_args=["--count", "1000", "--seed", "5"])
    assert app.name == app_name
    assert 'source "Transactions" at gen:' in app.startup_line
    assert text_lines(receiver.wait_done()) == expected
    code = app.proc.wait(STOP_TIMEOUT)      # no signal: the bounded source ends the run
    assert code == 0, app.proc.describe()


def test_alerts_unbounded_stops_on_sigterm(harness):
    """Without --count the generator never ends (like the original): SIGTERM stops the run
    with exit 0, and what reached the sink is exactly a prefix of the reference stream."""
    receiver = harness.receiver(expect=None)
    app = harness.app(ALERTS_FOLDER, "alerts_stateless", [], receiver.port)
    receiver.wait_for_lines(200)
    assert app.proc.poll() is None, "an unbounded source must keep the run going"
    assert app.stop() == 0, app.proc.describe()
    got = text_lines(receiver.stop())
    assert len(got) >= 200
    expected: list[str] = []
    count = 0
    while len(expected) < len(got):
        count = max(2 * count, 10 * len(got))
        expected = ref_alerts_stateless(transactions(count, seed=1))
    assert got == expected[:len(got)]


@pytest.mark.parametrize("module, reference, app_name", ALERTS, ids=[a[0] for a in ALERTS])
def test_alerts_in_process_generator(example, module, reference, app_name):
    mod = example(ALERTS_FOLDER, module)
    [out] = wallaroo.testing.run(mod, {}, timeout=IN_PROCESS_TIMEOUT,
                                 args=["--out", f"{HOST}:0", "--count", "2000"])
    expected = reference(transactions(2000, seed=1))
    assert len(expected) > 10
    assert out == expected


def test_alerts_stateless_thresholds_in_process(example):
    mod = example(ALERTS_FOLDER, "alerts_stateless")
    Transaction = example(ALERTS_FOLDER, "transactions").Transaction
    amounts = [1000, 1001, -1000, -1001, 0, 1249, -1250]
    txs = [(i % 5, amount) for i, amount in enumerate(amounts)]
    decoded = [Transaction(i, user, amount, 0) for i, (user, amount) in enumerate(txs)]
    [out] = wallaroo.testing.run(mod, {"Transactions": decoded}, timeout=IN_PROCESS_TIMEOUT,
                                 args=["--out", f"{HOST}:0"])
    assert out == ref_alerts_stateless(txs) == [
        "Deposit Alert for user 1: 1001", "Withdrawal Alert for user 3: -1001",
        "Deposit Alert for user 0: 1249", "Withdrawal Alert for user 1: -1250"]


def test_alerts_stateful_crossings_in_process(example):
    """Crossing, staying beyond, coming back and crossing again, per user."""
    mod = example(ALERTS_FOLDER, "alerts_stateful")
    Transaction = example(ALERTS_FOLDER, "transactions").Transaction
    txs = [(0, 1500), (1, 2000), (0, 600), (0, 100), (1, 1), (0, -300), (1, -1),
           (0, 200), (0, -4200), (0, -1), (1, -4002), (1, 1)]
    decoded = [Transaction(i, user, amount, 0) for i, (user, amount) in enumerate(txs)]
    [out] = wallaroo.testing.run(mod, {"Transactions": decoded}, timeout=IN_PROCESS_TIMEOUT,
                                 args=["--out", f"{HOST}:0"])
    expected = ref_alerts_stateful(txs)
    assert expected == ["Deposit Alert for user 0: total 2100", "Deposit Alert for user 1: total 2001",
                        "Deposit Alert for user 0: total 2100", "Withdrawal Alert for user 0: total -2100",
                        "Withdrawal Alert for user 1: total -2002"]
    # order is only promised per key
    for user in (0, 1):
        mine = [a for a in out if f"for user {user}:" in a]
        assert mine == [a for a in expected if f"for user {user}:" in a]
    assert len(out) == len(expected)


# ---------------------------------------------------------------------------------------------
# setup errors

NO_SINK_APP = """\
import wallaroo

@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(payload):
    return payload

def application_setup(args):
    p = wallaroo.source("In", wallaroo.TCPSourceConfig("In", "127.0.0.1", "0", decode))
    return wallaroo.build_application("No Sink", p)
"""

SETUP_ERRORS = {
    # case: (module files to write, module name, words the message must contain)
    "missing module": ({}, "no_such_module_xyz", ["no_such_module_xyz"]),
    "no application_setup": ({"no_setup.py": "x = 1\n"}, "no_setup", ["application_setup"]),
    "pipeline without a sink": ({"no_sink.py": NO_SINK_APP}, "no_sink", ["sink"]),
}


@pytest.mark.parametrize("case", list(SETUP_ERRORS))
def test_setup_error_is_one_line_and_exit_2(harness, tmp_path, case):
    files, module, words = SETUP_ERRORS[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    proc = harness.start("wallaroo-run", [WALLAROO_RUN, "--application-module", module,
                                           "--out", f"{HOST}:{free_port()}"], cwd=tmp_path)
    assert proc.wait(START_TIMEOUT) == 2, proc.describe()
    # stdout and stderr together hold exactly one line
    lines = [line for line in proc.stderr_lines + proc.stdout.decode().splitlines() if line.strip()]
    assert len(lines) == 1, proc.describe()
    assert all(word in lines[0] for word in words), proc.describe()
