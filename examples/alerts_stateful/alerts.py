"""Alerts (stateful): watch each user's running balance.

The input comes from an internal generator source (``GenSourceConfig``):
a deterministic stream of bank transactions for five users, with amounts
between -1250 and 1249. The stream is partitioned by user and a state
computation keeps each user's running total. When the total crosses
+2000 (from at most 2000 to above it) or -2000 (from at least -2000 to below
it) an alert is emitted::

    Deposit Alert for user 3: total 2417
    Withdrawal Alert for user 1: total -2130

Staying above (or below) the threshold does not repeat the alert; coming back
inside and crossing again does.

Application flags:

    --count N   stop after N transactions, which ends the run (default: never stop)
    --seed S    seed of the transaction generator (default 1)

Run it (see README.md)::

    wallaroo-run --application-module alerts --out 127.0.0.1:7002 --count 1000
"""
import argparse

import wallaroo

USERS = 5
THRESHOLD = 2000


def application_setup(args):
    options = parse_options(args)
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    transactions = wallaroo.source(
        "Transactions",
        wallaroo.GenSourceConfig("Transactions", TransactionsGenerator(options.count, options.seed)))

    pipeline = (transactions
                .key_by(extract_user)
                .to(check_transaction_total)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_alert)))

    return wallaroo.build_application("Alerts (stateful)", pipeline)


def parse_options(args):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    options, _ = parser.parse_known_args(args)
    return options


class Transaction(object):
    def __init__(self, seq, user, amount, rng_state):
        self.seq = seq              # 0, 1, 2, ...
        self.user = user            # 0 .. USERS-1
        self.amount = amount        # -1250 .. 1249; negative is a withdrawal
        self.rng_state = rng_state  # generator state that produced this transaction

    def __repr__(self):
        return "Transaction(seq={}, user={}, amount={})".format(self.seq, self.user, self.amount)


def _next_state(state):
    # 64-bit linear congruential generator (Knuth's MMIX constants)
    return (state * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF


def make_transaction(seq, previous_state):
    state = _next_state(previous_state)
    user = (state >> 20) % USERS
    amount = (state >> 33) % 2500 - 1250
    return Transaction(seq, user, amount, state)


class TransactionsGenerator(object):
    """Deterministic transactions; ``count`` = None never ends."""

    def __init__(self, count=None, seed=1):
        self.count = count
        self.seed = seed

    def initial_value(self):
        if self.count is not None and self.count <= 0:
            return None
        return make_transaction(0, self.seed)

    def apply(self, previous):
        seq = previous.seq + 1
        if self.count is not None and seq >= self.count:
            return None             # ends the source
        return make_transaction(seq, previous.rng_state)


@wallaroo.key_extractor
def extract_user(transaction):
    return str(transaction.user)


class TransactionTotal(object):
    """One user's running total, and which side of the thresholds it is on."""

    def __init__(self):
        self.total = 0
        self.zone = 0       # 1 above +THRESHOLD, -1 below -THRESHOLD, 0 in between


@wallaroo.state_computation(name="check transaction total", state=TransactionTotal)
def check_transaction_total(transaction, state):
    state.total += transaction.amount
    if state.total > THRESHOLD:
        zone = 1
    elif state.total < -THRESHOLD:
        zone = -1
    else:
        zone = 0
    crossed = zone != 0 and zone != state.zone
    state.zone = zone
    if not crossed:
        return None
    kind = "Deposit" if zone > 0 else "Withdrawal"
    return "{} Alert for user {}: total {}".format(kind, transaction.user, state.total)


@wallaroo.encoder
def encode_alert(alert):
    return (alert + "\n").encode("utf-8")
