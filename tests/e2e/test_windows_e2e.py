"""End-to-end tests of windows and event time, run as a user runs them (real processes).

- The windowed alerts example (examples/alerts/alerts_windowed.py): a generator source with
  event times 10 ms apart -> key_by(user) -> sliding 9 s / 3 s windows over TotalAggregation ->
  TCP sink. The alerts must equal, per user, what a plain-Python model of the window contract
  (/tmp/spec/windows.md) computes over the same deterministic transactions: bounded (``--count``),
  and unbounded stopped with SIGTERM (a clean stop fires every open window, so what arrives is
  the model's output for some prefix of the stream).
- tests/apps/wr_windowed_app.py: a TCP source of ``t_ms,key,value`` lines (event time from the
  message) -> key_by(key) -> tumbling windows summing values -> TCP sink, plus an ``ack`` sink
  that echoes every message, so a test knows what the engine has taken in. Runs: every window
  held open (long delay) until SIGTERM fires them; windows firing while the engine runs (event
  times far beyond a window, out-of-order and late messages included); an idle input letting
  the last window fire without a stop (``--idle-timeout``).

Across keys the contract promises no order, so outputs are compared per key (exactly, in order)
and as a whole (as multisets). Only 127.0.0.1 is used; everything started is killed in teardown.
"""
from __future__ import annotations

import random
import re
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import wallaroo
import wallaroo.testing
from harness import STOP_TIMEOUT, START_TIMEOUT
from support.net import HOST
from support.processes import APPS, WALLAROO_RUN, app_env

pytestmark = pytest.mark.timeout(120)

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
SEEN_TIMEOUT = 30.0         # seconds for output or acks to arrive


def text_lines(data: bytes) -> list[str]:
    text = data.decode("utf-8")
    assert text.endswith("\n") or not text, f"output does not end with a newline: {text[-200:]!r}"
    return text.split("\n")[:-1] if text else []


def count_lines(n: int):
    return lambda data: data.count(b"\n") >= n


# ---------------------------------------------------------------------------------------------
# the windowed alerts example

ALERTS = "alerts"
ALERT_RANGE = 9 * NS_PER_S
ALERT_SLIDE = 3 * NS_PER_S
ALERT_STEP = 10 * NS_PER_MS       # event time between two transactions
ALERT_THRESHOLD = 10000
ALERT_RE = re.compile(
    r"(Deposit|Withdrawal) Alert for user ([0-4]): total (-?\d+) in \[(-?\d+) s, (-?\d+) s\)")


def alert_line(user: int, total: int, k: int) -> str:
    start = k * ALERT_SLIDE
    kind = "Deposit" if total > 0 else "Withdrawal"
    end = start + ALERT_RANGE
    return f"{kind} Alert for user {user}: total {total} in [{start // NS_PER_S} s, {end // NS_PER_S} s)"


class WindowedAlertsModel:
    """The example under the window contract, in plain Python.

    Transaction ``seq`` has event time ``seq * 10 ms``; it belongs to every window
    ``[k*3 s, k*3 s + 9 s)`` covering it. The watermark, after a transaction is placed, is its
    event time (times only rise: nothing is late); windows whose end is <= the watermark fire,
    in order of end, and a fired window whose total is beyond +-THRESHOLD is an alert. At the
    end of input or a clean stop every open window fires (:meth:`at_stop`).
    """

    def __init__(self) -> None:
        self.open: dict[int, dict[int, int]] = defaultdict(dict)    # user -> {k: total}
        self.fired: dict[int, list[str]] = defaultdict(list)         # user -> alert lines
        self.watermark: int | None = None
        self.count = 0

    def add(self, transaction) -> None:
        assert transaction.seq == self.count
        self.count += 1
        t = transaction.seq * ALERT_STEP
        windows = self.open[transaction.user]
        for k in range((t - ALERT_RANGE) // ALERT_SLIDE + 1, t // ALERT_SLIDE + 1):
            windows[k] = windows.get(k, 0) + transaction.amount
        # window ends are multiples of the slide: only crossing one can fire a window
        crossed = self.watermark is None or t // ALERT_SLIDE > self.watermark // ALERT_SLIDE
        self.watermark = t
        if crossed:
            for user, windows in self.open.items():
                for k in sorted(k for k in windows if k * ALERT_SLIDE + ALERT_RANGE <= t):
                    self._fire(user, k, windows.pop(k), self.fired[user])

    @staticmethod
    def _fire(user: int, k: int, total: int, out: list[str]) -> None:
        if abs(total) > ALERT_THRESHOLD:
            out.append(alert_line(user, total, k))

    def at_stop(self) -> dict[int, list[str]]:
        """Per user, the alerts of a run that ends (or is stopped) now."""
        result = {}
        for user in set(self.open) | set(self.fired):
            lines = list(self.fired[user])
            for k in sorted(self.open[user]):
                self._fire(user, k, self.open[user][k], lines)
            result[user] = lines
        return {user: lines for user, lines in result.items() if lines}


def transactions(example, count: int | None, seed: int):
    """The example's own generator (transactions.py): the transactions, in order."""
    gen = example(ALERTS, "transactions").TransactionsGenerator(count, seed)
    tx = gen.initial_value()
    while tx is not None:
        yield tx
        tx = gen.apply(tx)


def ref_windowed_alerts(example, count: int, seed: int) -> dict[int, list[str]]:
    model = WindowedAlertsModel()
    for tx in transactions(example, count, seed):
        model.add(tx)
    return model.at_stop()


def by_user(lines: list[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for line in lines:
        match = ALERT_RE.fullmatch(line)
        assert match, f"not an alert line: {line!r}"
        kind, user, total, start, end = match.groups()
        total, start, end = int(total), int(start), int(end)
        assert (kind == "Deposit" and total > ALERT_THRESHOLD) or \
            (kind == "Withdrawal" and total < -ALERT_THRESHOLD), line
        assert end - start == 9 and start % 3 == 0, line
        out[int(user)].append(line)
    return dict(out)


def test_windowed_alerts_reference_is_meaningful(example):
    expected = ref_windowed_alerts(example, 6000, seed=5)
    lines = [line for user_lines in expected.values() for line in user_lines]
    assert 10 < len(lines) < 110              # 6000 transactions: 60 s, 22 windows for each user
    assert len(expected) == 5
    assert any(line.startswith("Deposit") for line in lines)
    assert any(line.startswith("Withdrawal") for line in lines)
    assert all(ALERT_RE.fullmatch(line) for line in lines)
    mod = example(ALERTS, "alerts_windowed")
    assert (mod.THRESHOLD, mod.WINDOW_RANGE, mod.WINDOW_SLIDE, mod.TRANSACTION_INTERVAL) == \
        (ALERT_THRESHOLD, ALERT_RANGE, ALERT_SLIDE, ALERT_STEP)


@pytest.mark.parametrize("original_style", [False, True], ids=["app", "application-module"])
def test_windowed_alerts_e2e_bounded(harness, listener, example, original_style):
    """``--count`` bounds the generator: the run ends by itself (exit 0) after every window
    fired, and the alerts equal the model's, per user in window order."""
    expected = ref_windowed_alerts(example, 6000, seed=5)
    sink = listener()
    app = harness.app(ALERTS, "alerts_windowed", [], sink.port,
                      app_args=["--count", "6000", "--seed", "5"], original_style=original_style)
    assert app.name == "Alerts (windowed)"
    assert 'source "Transactions" at gen:' in app.startup_line
    code = app.proc.wait(SEEN_TIMEOUT)      # no signal: the bounded source ends the run
    assert code == 0, app.proc.describe()
    got = text_lines(sink.wait_closed())
    assert by_user(got) == expected, app.proc.describe()


def test_windowed_alerts_unbounded_fire_while_running_and_on_sigterm(harness, listener, example):
    """Without --count the generator never ends: windows fire as its event time advances (the
    alerts arrive while it runs), and SIGTERM fires the open ones. What arrived must be exactly
    the model's output for the first N transactions, for some N."""
    sink = listener()
    app = harness.app(ALERTS, "alerts_windowed", [], sink.port, app_args=["--seed", "2"])
    before = sink.wait_for(count_lines(40), timeout=SEEN_TIMEOUT)
    assert app.proc.poll() is None, "an unbounded source must keep the run going"
    assert app.stop() == 0, app.proc.describe()
    data = sink.wait_closed(timeout=STOP_TIMEOUT)
    assert data.startswith(before)
    observed = by_user(text_lines(data))

    # Feed the model one transaction at a time; after each, the alerts of its fired windows
    # must still be a prefix of what arrived (else N is smaller and the search is over), and
    # once at most the open windows are missing, compare what a stop now would give.
    total = sum(len(lines) for lines in observed.values())
    model = WindowedAlertsModel()
    checked = defaultdict(int)          # user -> fired alerts already matched with observed
    found = None
    for tx in transactions(example, 5_000_000, seed=2):
        model.add(tx)
        prefix = True
        for user, lines in model.fired.items():
            if len(lines) > checked[user]:
                if lines[checked[user]:] != observed.get(user, [])[checked[user]:len(lines)]:
                    prefix = False
                    break
                checked[user] = len(lines)
        if not prefix:
            break
        # at most 3 windows per user are open
        if sum(checked.values()) >= total - 3 * 5 and model.at_stop() == observed:
            found = model.count
            break
    assert found is not None, (f"the alerts match no prefix of the transactions "
                               f"(searched up to {model.count}):\n{data[-3000:].decode()}")
    assert found > 9 * 100, "the windows fired while running must cover several windows"


def test_windowed_alerts_in_process(example):
    mod = example(ALERTS, "alerts_windowed")
    [out] = wallaroo.testing.run(mod, {}, timeout=30, args=["--out", f"{HOST}:0", "--count", "3000"])
    expected = ref_windowed_alerts(example, 3000, seed=1)
    assert by_user(out) == expected


# ---------------------------------------------------------------------------------------------
# tumbling windows over a TCP source, event time from the message (tests/apps/wr_windowed_app.py)

def simulate_tumbling(messages: list[tuple[int, str, int]], window_ms: int, delay_ms: int = 0):
    """The window contract for ``messages`` (t_ms, key, value) read in this order by one
    source: returns (lines fired while the data was read, lines fired at the end, late count).

    The watermark W starts at -infinity and, after each message is placed, becomes the highest
    event time seen. A message is late (dropped) when its window [k*w, k*w + w) has
    k*w + w + delay <= W before it arrives. Windows with end + delay <= W fire, in order of end.
    Lines are ``key,start_ms,end_ms,sum,count``."""
    windows: dict[tuple[int, str], list[int]] = {}
    watermark = None
    running, late = [], 0

    def line(k: int, key: str) -> str:
        total, count = windows.pop((k, key))
        return f"{key},{k * window_ms},{k * window_ms + window_ms},{total},{count}"

    for t, key, value in messages:
        k = t // window_ms
        if watermark is not None and k * window_ms + window_ms + delay_ms <= watermark:
            late += 1
            continue
        acc = windows.setdefault((k, key), [0, 0])
        acc[0] += value
        acc[1] += 1
        watermark = t if watermark is None else max(watermark, t)
        due = sorted(w for w in windows if w[0] * window_ms + window_ms + delay_ms <= watermark)
        running += [line(k2, key2) for k2, key2 in due]
    at_end = [line(k, key) for k, key in sorted(windows)]
    return running, at_end, late


def per_key(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        out[line.split(",")[0]].append(line)
    return dict(out)


def check_sums(got: list[str], expected: list[str]) -> None:
    """The same lines, and per key in the same order (the order of window ends)."""
    for line in got:
        assert re.fullmatch(r"k\d,-?\d+,-?\d+,-?\d+,\d+", line), line
    assert per_key(got) == per_key(expected)
    assert Counter(got) == Counter(expected)


def write_messages(path: Path, messages: list[tuple[int, str, int]]) -> Path:
    path.write_text("".join(f"{t},{key},{value}\n" for t, key, value in messages), "utf-8")
    return path


def start_windowed_app(harness, sums, acks, *args: str):
    """wallaroo-run of tests/apps/wr_windowed_app.py; returns (proc, port of "events")."""
    argv = [WALLAROO_RUN, "--app", "wr_windowed_app", "--in", f"events@{HOST}:0",
            "--out", f"{sums.address},{acks.address}", *args]
    proc = harness.start("wallaroo-run wr_windowed_app", argv, cwd=APPS, env=app_env())
    match, ports = proc.startup(START_TIMEOUT)
    assert match["app"] == "Windowed Sums"
    assert "events" in ports and ports["events"] > 0, match.group(0)
    return proc, ports["events"]


def send_and_wait_acks(harness, port: int, path: Path, messages, acks) -> None:
    """``wallaroo send`` the file, then wait until the engine has read every message."""
    harness.send(port, path)
    data = acks.wait_for(count_lines(len(messages)), timeout=SEEN_TIMEOUT)
    assert text_lines(data) == [f"ack,{t},{key},{value}" for t, key, value in messages]


def stop(proc) -> None:
    proc.signal(signal.SIGTERM)
    code = proc.wait(STOP_TIMEOUT)
    assert code == 0, proc.describe()
    assert "not fully delivered" not in proc.stderr, proc.describe()


KEYS = ["k0", "k1", "k2", "k7"]


def test_tumbling_windows_fire_on_clean_stop(harness, listener, tmp_path):
    """Every window is held open by a one-hour delay; SIGTERM fires them all, with exact sums."""
    rng = random.Random(17)
    messages = [(rng.randrange(0, 6000), rng.choice(KEYS), rng.randrange(-50, 101)) for _ in range(400)]
    running, at_end, late = simulate_tumbling(messages, 1000, delay_ms=3_600_000)
    assert running == [] and late == 0 and len(at_end) == 24     # 6 windows x 4 keys

    sums, acks = listener(), listener()
    proc, port = start_windowed_app(harness, sums, acks, "--window-ms", "1000", "--delay-ms", "3600000")
    send_and_wait_acks(harness, port, write_messages(tmp_path / "events.txt", messages), messages, acks)
    time.sleep(0.5)
    assert sums.data == b"", "no window may fire before its end plus the delay"
    assert proc.poll() is None, proc.describe()
    stop(proc)
    got = text_lines(sums.wait_closed(timeout=STOP_TIMEOUT))
    check_sums(got, at_end)     # per key in order of end, at a clean stop too


def test_tumbling_windows_fire_while_running(harness, listener, tmp_path):
    """Event times run to 60 s over 1 s windows: windows fire while the engine runs, out-of-order
    messages count in their still-open windows, late ones are dropped; SIGTERM fires the rest."""
    rng = random.Random(23)
    messages = []
    for i in range(600):
        t = max(0, i * 100 + rng.randrange(-300, 301))         # out of order, a little
        messages.append((t, rng.choice(KEYS), rng.randrange(-50, 101)))
        if i % 97 == 50:                                        # far behind: late
            messages.append((i * 100 - 2500, rng.choice(KEYS), 1000))
    running, at_end, late = simulate_tumbling(messages, 1000)
    assert late >= 6 and len(running) > 200 and 1 <= len(at_end) <= 4
    highest, out_of_order = messages[0][0], 0
    for t, _, _ in messages[1:]:
        out_of_order += t < highest < (t // 1000 + 1) * 1000    # behind, but its window is open
        highest = max(highest, t)
    assert out_of_order >= 10

    sums, acks = listener(), listener()
    proc, port = start_windowed_app(harness, sums, acks, "--window-ms", "1000")
    send_and_wait_acks(harness, port, write_messages(tmp_path / "events.txt", messages), messages, acks)
    # everything was read: the windows the watermark passed have fired, and arrive before the stop
    before = sums.wait_for(count_lines(len(running)), timeout=SEEN_TIMEOUT)
    assert proc.poll() is None, proc.describe()
    got_before = text_lines(before[:before.rfind(b"\n") + 1])
    assert per_key(got_before[:len(running)]) == per_key(running)
    stop(proc)
    got = text_lines(sums.wait_closed(timeout=STOP_TIMEOUT))
    assert got[:len(got_before)] == got_before
    check_sums(got, running + at_end)


def test_idle_input_lets_the_last_window_fire(harness, listener, tmp_path):
    """With ``--idle-timeout 1`` an input that falls silent stops holding the watermark back: it
    advances with the wall clock, so the last window fires without a stop."""
    rng = random.Random(5)
    messages = [(i * 50, rng.choice(KEYS), rng.randrange(0, 100)) for i in range(100)]   # to 4.95 s
    running, at_end, late = simulate_tumbling(messages, 1000)
    assert late == 0 and at_end

    sums, acks = listener(), listener()
    proc, port = start_windowed_app(harness, sums, acks, "--window-ms", "1000", "--idle-timeout", "1")
    send_and_wait_acks(harness, port, write_messages(tmp_path / "events.txt", messages), messages, acks)
    data = sums.wait_for(count_lines(len(running) + len(at_end)), timeout=15)
    assert proc.poll() is None, proc.describe()
    check_sums(text_lines(data), running + at_end)
    stop(proc)
    check_sums(text_lines(sums.wait_closed(timeout=STOP_TIMEOUT)), running + at_end)
