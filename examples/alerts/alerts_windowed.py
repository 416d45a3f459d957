"""Alerts (windowed): flag users whose transactions add up to a lot within 9 seconds.

The input comes from an internal generator source (``GenSourceConfig``): the same deterministic
stream of bank transactions for five users as the other alerts examples (transactions.py), with
amounts between -1250 and 1249. Each transaction carries an event time: transaction number
``seq`` happened at ``seq * 10 ms`` (``transaction_time``), so 900 transactions make 9 seconds
of event time, whatever speed the generator runs at, and the output is the same on every run.

The stream is partitioned by user and goes through sliding event-time windows of 9 seconds that
start every 3 seconds (``range_windows(seconds(9)).with_slide(seconds(3))``), aggregated by
``TotalAggregation``: each window holds the sum of a user's transactions in it. When a window
closes, its total becomes an alert if it is above +10000 or below -10000::

    Withdrawal Alert for user 1: total -12996 in [-3 s, 6 s)
    Deposit Alert for user 3: total 14544 in [3 s, 12 s)

(Times are event-time seconds from the start of the stream. Windows are aligned to event time
0, so the first two windows of each user reach back before the stream started and hold only its
first 3 or 6 seconds.) A window closes once the generator has passed its end in event time; at
the end of a bounded run, or when the run is stopped with SIGTERM or Ctrl-C, every window still
open fires with what it holds.

Application flags: ``--count N`` ends the run after N transactions (N * 10 ms of event time),
``--seed S`` picks the stream (see transactions.py). Without ``--count`` the generator never
ends, like the original example: stop the run with Ctrl-C.

Run it (see README.md)::

    wallaroo receive --listen 127.0.0.1:7002                                               # terminal 1
    wallaroo-run --application-module alerts_windowed --out 127.0.0.1:7002 --count 6000    # terminal 2
"""
import wallaroo

from transactions import TransactionsGenerator, parse_options

THRESHOLD = 10000
TRANSACTION_INTERVAL = wallaroo.milliseconds(10)   # event time between two transactions
WINDOW_RANGE = wallaroo.seconds(9)
WINDOW_SLIDE = wallaroo.seconds(3)


def application_setup(args):
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    options = parse_options(args)       # --count N (None: never ends) and --seed S
    generator = TransactionsGenerator(options.count, options.seed)
    transactions = wallaroo.source("Transactions", wallaroo.GenSourceConfig("Transactions", generator),
                                   event_time=transaction_time)
    pipeline = (transactions
                .key_by(extract_user)
                .to(wallaroo.range_windows(WINDOW_RANGE)
                    .with_slide(WINDOW_SLIDE)
                    .over(TotalAggregation))
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_alert)))

    return wallaroo.build_application("Alerts (windowed)", pipeline)


def transaction_time(transaction):
    """The event time of a transaction, in nanoseconds: 10 ms per transaction from time 0."""
    return transaction.seq * TRANSACTION_INTERVAL


@wallaroo.key_extractor
def extract_user(transaction):
    return str(transaction.user)


class TransactionTotal(object):
    def __init__(self, total=0):
        self.total = total


class TotalAggregation(wallaroo.Aggregation):
    """The sum of one user's transaction amounts in a window."""

    def initial_accumulator(self):
        return TransactionTotal()

    def update(self, transaction, acc):
        acc.total += transaction.amount

    def combine(self, acc1, acc2):
        return TransactionTotal(acc1.total + acc2.total)

    def output(self, user, acc, window):
        if acc.total > THRESHOLD:
            kind = "Deposit"
        elif acc.total < -THRESHOLD:
            kind = "Withdrawal"
        else:
            return None
        start, end = window
        return "{} Alert for user {}: total {} in [{} s, {} s)".format(
            kind, user, acc.total, _seconds(start), _seconds(end))


def _seconds(ns):
    """Event time in whole seconds when it is one (window bounds are), else with decimals."""
    if ns % wallaroo.seconds(1) == 0:
        return str(ns // wallaroo.seconds(1))
    return "{:.3f}".format(ns / wallaroo.seconds(1))


@wallaroo.encoder
def encode_alert(alert):
    return (alert + "\n").encode("utf-8")
