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

Application flags: ``--count N`` ends the run after N transactions, ``--seed S`` picks the
stream (see transactions.py).

Run it (see README.md)::

    wallaroo-run --application-module alerts_stateful --out 127.0.0.1:7002 --count 1000
"""
import wallaroo

from transactions import transactions_source

THRESHOLD = 2000


def application_setup(args):
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    pipeline = (transactions_source(args)
                .key_by(extract_user)
                .to(check_transaction_total)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_alert)))

    return wallaroo.build_application("Alerts (stateful)", pipeline)


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
