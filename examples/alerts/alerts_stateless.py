"""Alerts (stateless): flag unusually big deposits and withdrawals.

The input comes from an internal generator source (``GenSourceConfig``):
a deterministic stream of bank transactions for five users, with amounts
between -1250 and 1249. A stateless computation lets through only the big
ones (more than 1000 either way) as alert lines::

    Deposit Alert for user 3: 1132
    Withdrawal Alert for user 0: -1207

Application flags: ``--count N`` ends the run after N transactions, ``--seed S`` picks the
stream (see transactions.py).

Run it (see README.md)::

    wallaroo-run --application-module alerts_stateless --out 127.0.0.1:7002 --count 1000
"""
import wallaroo

from transactions import transactions_source

THRESHOLD = 1000


def application_setup(args):
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    pipeline = (transactions_source(args)
                .to(check_transaction)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_alert)))

    return wallaroo.build_application("Alerts (stateless)", pipeline)


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
