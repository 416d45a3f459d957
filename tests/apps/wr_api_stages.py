"""Module-level decorated stages for tests/test_api.py (pickling needs an importable module),
and a generator for GenSourceConfig that tests/apps/wr_cli_app.py uses too."""
import wallaroo


@wallaroo.computation(name="triple")
def triple(x):
    return x * 3


@wallaroo.computation_multi(name="explode")
def explode(text):
    return list(text)


class Tally:
    def __init__(self):
        self.total = 0


@wallaroo.state_computation(name="running total", state=Tally)
def running_total(x, state):
    state.total += x
    return state.total


@wallaroo.state_computation_multi(name="total twice", state=Tally)
def total_twice(x, state):
    state.total += x
    return [state.total, -state.total]


@wallaroo.key_extractor
def parity(x):
    return "even" if x % 2 == 0 else "odd"


@wallaroo.decoder(header_length=2, length_fmt=">H")
def latin1(payload):
    return payload.decode("latin-1")


@wallaroo.encoder
def as_line(x):
    return f"{x}\n"


def plain_square(x):
    """Not decorated at module level: wrapped by the test, so it pickles by value."""
    return x * x


def plain_add_to_tally(x, state):
    """Not decorated at module level: the test wraps it in a state computation."""
    state.total += x
    return state.total


class Countdown:
    """GenSourceConfig generator: n, n-1, ..., 1, then None."""

    def __init__(self, n):
        self.n = n

    def initial_value(self):
        return self.n

    def apply(self, previous):
        return previous - 1 if previous > 1 else None
