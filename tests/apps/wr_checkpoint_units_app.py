"""App for tests/test_checkpoints.py: a state computation and an event-time range window over
one iterable source, run in-process (no ``application_setup``: the tests build it with
``build(events, ...)``).

Events are ``(t_ns, key, value)``; the event time is ``t_ns``.

- Sink 0: ``key_by(key)`` -> ``running`` (state computation: a running sum per key, kept in a
  ``Total``) -> ``(key, running sum, t_ns)``.
- Sink 1: ``key_by(key)`` -> ``range_windows(range_ns)`` (``.with_slide(slide_ns)`` when given)
  over ``Sum`` -> ``(key, (start, end), sum, count)``.

The state (``Total``) lives in this module so that a checkpoint pickles it by reference, as an
application's own classes are.
"""
import wallaroo


class Total:
    """A key's running sum (the state of ``running``)."""

    def __init__(self):
        self.n = 0


@wallaroo.state_computation(name="running", state=Total)
def running(event, total):
    total.n += event[2]
    return (event[1], total.n, event[0])


@wallaroo.key_extractor
def event_key(event):
    return event[1]


def event_time(event):
    return event[0]


class Sum(wallaroo.Aggregation):
    """[sum, count] of a key's values in one window."""

    def initial_accumulator(self):
        return [0, 0]

    def update(self, event, acc):
        acc[0] += event[2]
        acc[1] += 1

    def combine(self, acc1, acc2):
        return [acc1[0] + acc2[0], acc1[1] + acc2[1]]

    def output(self, key, acc, window):
        return (key, window, acc[0], acc[1])


@wallaroo.encoder
def text(value):
    return f"{value}\n"


def build(events, range_ns=1000, slide_ns=None):
    """The application over ``events`` (a list: it gives the same values when set up again)."""
    windows = wallaroo.range_windows(range_ns)
    if slide_ns is not None:
        windows = windows.with_slide(slide_ns)
    source = wallaroo.source("events", wallaroo.IterSourceConfig("events", events),
                             event_time=event_time)
    states = source.key_by(event_key).to(running).to_sink(wallaroo.StdoutSinkConfig(text))
    sums = source.key_by(event_key).to(windows.over(Sum)).to_sink(wallaroo.StdoutSinkConfig(text))
    return wallaroo.build_application("checkpoint units", states.merge(sums))
