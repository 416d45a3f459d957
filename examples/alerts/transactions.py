"""The transaction stream both alerts examples read: a deterministic generator source.

A 64-bit linear congruential generator (Knuth's MMIX constants) drives five users' transactions
with amounts from -1250 to 1249. ``--count N`` ends the stream after N transactions (so the run
ends by itself); without it the stream never ends, like the original example. ``--seed S``
picks the stream (default 1).

Application flags (all three apps):

    --count N   stop after N transactions, which ends the run (default: never stop)
    --seed S    seed of the transaction generator (default 1)

Example::

    >>> gen = TransactionsGenerator(count=2, seed=1)
    >>> first = gen.initial_value()
    >>> gen.apply(gen.apply(first)) is None
    True
"""
import argparse

import wallaroo

USERS = 5


def transactions_source(args):
    """The "Transactions" generator source, set up from ``--count`` and ``--seed`` in args."""
    options = parse_options(args)
    generator = TransactionsGenerator(options.count, options.seed)
    return wallaroo.source("Transactions", wallaroo.GenSourceConfig("Transactions", generator))


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
