"""Alerts (stateless): flag unusually big deposits and withdrawals.

The input comes from an internal generator source (``GenSourceConfig``):
a deterministic stream of bank transactions for five users, with amounts
between -1250 and 1249. A stateless computation lets through only the big
ones (more than 1000 either way) as alert lines::

    Deposit Alert for user 3: 1132
    Withdrawal Alert for user 0: -1207

Application flags:

    --count N   stop after N transactions, which ends the run (default: never stop)
    --seed S    seed of the transaction generator (default 1)

Run it (see README.md)::

    wallaroo-run --application-module alerts --out 127.0.0.1:7002 --count 1000
"""
import argparse

import wallaroo

USERS = 5
THRESHOLD = 1000


def application_setup(args):
    options = parse_options(args)
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    transactions = wallaroo.source(
        "Transactions",
        wallaroo.GenSourceConfig("Transactions", TransactionsGenerator(options.count, options.seed)))

    pipeline = (transactions
                .to(check_transaction)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_alert)))

    return wallaroo.build_application("Alerts (stateless)", pipeline)


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


@wallaroo.computation(name="check transaction")
def check_transaction(transaction):
    if transaction.amount > THRESHOLD:
        return "Deposit Alert for user {}: {}".format(transaction.user, transaction.amount)
    if transaction.amount < -THRESHOLD:
        return "Withdrawal Alert for user {}: {}".format(transaction.user, transaction.amount)
    return None


@wallaroo.encoder
def encode_alert(alert):
    return alert + "\n"
