"""Windows over keyed streams: count, range (tumbling or sliding) and session windows.

A builder records what the application asks for and checks it at once, so a mistake is reported
where the app is built: ``count_windows(n)``, ``range_windows(r)`` and ``session_windows(gap)``
return builders; ``.over(Aggregation)`` finishes one into a ``WindowSpec`` for ``Pipeline.to``.
Times are integer nanoseconds (see ``wallaroo.seconds`` and friends).

Example::

    >>> import wallaroo
    >>> class Total(wallaroo.Aggregation):
    ...     def initial_accumulator(self): return [0]
    ...     def update(self, data, acc): acc[0] += data
    ...     def combine(self, a, b): return [a[0] + b[0]]
    ...     def output(self, key, acc): return acc[0]
    >>> wallaroo.range_windows(10).with_slide(5).over(Total).describe()
    'range_windows(10).with_slide(5).over(Total)'
"""
from __future__ import annotations

import inspect
from typing import Any

from wallaroo._core.chain import DURATION_BOUND
from wallaroo.errors import WallarooParameterError

#: What to do with a message whose windows have all fired already.
LATE_DATA_POLICIES = ("drop", "fire-per-message", "place-in-oldest-window")
#: How long a partly filled count window waits for more messages before it is emitted.
DEFAULT_COUNT_TIMEOUT_NS = 5_000_000_000

_AGGREGATION_METHODS = {
    "initial_accumulator": "initial_accumulator(self)",
    "update": "update(self, data, acc)",
    "combine": "combine(self, acc1, acc2)",
    "output": "output(self, key, acc) or output(self, key, acc, window)",
}


class Aggregation:
    """Base class of window aggregations: subclass it and define the four methods.

    ``initial_accumulator`` returns the identity of ``combine``; ``update`` folds one value into
    an accumulator in place; ``combine`` returns a new accumulator from two (it must not change
    them); ``output(key, acc)`` returns what the window emits, or None for nothing. ``output``
    may take a third parameter, ``window``: the window's ``(start_ns, end_ns)``.

    Example::

        >>> class Count(Aggregation):
        ...     def initial_accumulator(self): return [0]
        ...     def update(self, data, acc): acc[0] += 1
        ...     def combine(self, a, b): return [a[0] + b[0]]
        ...     def output(self, key, acc): return (key, acc[0])
        >>> Count().name()
        'Count'
    """

    def name(self) -> str:
        """The aggregation's stage name (the class name by default)."""
        return type(self).__name__

    def initial_accumulator(self):
        """A fresh accumulator: the identity for ``combine``."""
        raise NotImplementedError

    def update(self, data, acc) -> None:
        """Fold one value into ``acc`` in place."""
        raise NotImplementedError

    def combine(self, acc1, acc2):
        """A new accumulator combining two (do not mutate either)."""
        raise NotImplementedError

    def output(self, key, acc):
        """The value a window emits for ``key``, or None to emit nothing."""
        raise NotImplementedError


class WindowSpec:
    """A window stage, ready for ``Pipeline.to``: what ``.over(Agg)`` returns.

    ``kind`` is "count", "range" or "session"; ``params`` holds the builder's settings;
    ``aggregation`` is the Aggregation instance; ``output_takes_window`` says whether its
    ``output`` takes the window as a third parameter.

    Example::

        >>> class Last(Aggregation):
        ...     def initial_accumulator(self): return []
        ...     def update(self, data, acc): acc[:] = [data]
        ...     def combine(self, a, b): return b or a
        ...     def output(self, key, acc, window): return (key, acc, window)
        >>> spec = session_windows(100).over(Last)
        >>> spec.kind, spec.params["gap"], spec.output_takes_window
        ('session', 100, True)
    """

    def __init__(self, kind: str, params: dict, aggregation: Any, call: str):
        self.kind = kind
        self.params = params
        self.aggregation = aggregation
        self._call = call
        self.output_takes_window = _check_aggregation(aggregation, call)

    def name(self) -> str:
        """The stage name: the aggregation's ``name()``."""
        return str(self.aggregation.name())

    def describe(self) -> str:
        """The builder calls this window came from."""
        return f"{self._call}.over({type(self.aggregation).__name__})"


class _WindowsBuilder:
    """What every window builder shares: its settings, the call so far, and ``over``."""

    kind = ""

    def __init__(self, params: dict, call: str):
        self._params = params
        self._call = call

    @property
    def params(self) -> dict:
        """The settings so far."""
        return dict(self._params)

    def _with(self, call: str, **changes) -> Any:
        clone = type(self).__new__(type(self))
        clone._params = {**self._params, **changes}
        clone._call = f"{self._call}.{call}"
        return clone

    def over(self, aggregation: Any) -> WindowSpec:
        """Finish the window with an Aggregation class (or instance)."""
        return WindowSpec(self.kind, dict(self._params), _instantiate(aggregation, self._call),
                          self._call)


class _EventTimeWindowsBuilder(_WindowsBuilder):
    """Delay and late-data policy: shared by range and session windows."""

    def with_delay(self, delay: int) -> Any:
        """Fire a window only once the watermark passes its end plus ``delay`` nanoseconds:
        room for data that arrives out of order."""
        call = f"with_delay({delay!r})"
        return self._with(call, delay=_nanoseconds(delay, f"{self._call}.{call}", allow_zero=True))

    def with_late_data_policy(self, policy: str) -> Any:
        """What to do with a message whose windows have all fired: ``"drop"`` (default),
        ``"fire-per-message"`` (emit it alone at once) or ``"place-in-oldest-window"``."""
        if policy not in LATE_DATA_POLICIES:
            raise WallarooParameterError(
                f"{self._call}.with_late_data_policy({policy!r}): unknown policy; use one of "
                f"{', '.join(repr(p) for p in LATE_DATA_POLICIES)}")
        return self._with(f"with_late_data_policy({policy!r})", late_data_policy=policy)


class CountWindowsBuilder(_WindowsBuilder):
    """Per key, emit every ``count`` messages: ``count_windows(n).over(Agg)``.

    A partly filled window is emitted once its first message is older than the timeout
    (``with_timeout``, 5 s by default) and at the end of the input.

    Example::

        >>> CountWindowsBuilder(5).with_timeout(10**9).params
        {'count': 5, 'timeout': 1000000000}
    """

    kind = "count"

    def __init__(self, count: int):
        call = f"count_windows({count!r})"
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise WallarooParameterError(
                f"{call}: the count must be a positive whole number of messages")
        super().__init__({"count": count, "timeout": DEFAULT_COUNT_TIMEOUT_NS}, call)

    def with_timeout(self, timeout: int) -> "CountWindowsBuilder":
        """Emit a partly filled window once its first message is ``timeout`` ns old."""
        call = f"with_timeout({timeout!r})"
        return self._with(call, timeout=_nanoseconds(timeout, f"{self._call}.{call}"))


class RangeWindowsBuilder(_EventTimeWindowsBuilder):
    """Event-time windows of ``range_ns``: tumbling, or sliding with ``.with_slide(s)``.

    Windows are aligned to the epoch: they cover ``[k*slide, k*slide + range)``.

    Example::

        >>> RangeWindowsBuilder(10).with_slide(5).with_delay(2).params
        {'range': 10, 'slide': 5, 'delay': 2, 'late_data_policy': 'drop'}
    """

    kind = "range"

    def __init__(self, range_ns: int):
        call = f"range_windows({range_ns!r})"
        range_ns = _nanoseconds(range_ns, call)
        super().__init__({"range": range_ns, "slide": range_ns, "delay": 0,
                          "late_data_policy": "drop"}, call)
        self._slid = False

    def with_slide(self, slide: int) -> "RangeWindowsBuilder":
        """Sliding windows: one starts every ``slide`` ns (0 < slide <= range)."""
        call = f"with_slide({slide!r})"
        where = f"{self._call}.{call}"
        if self._slid:
            raise WallarooParameterError(f"{where}: the slide is already set; call with_slide once")
        slide = _nanoseconds(slide, where)
        if slide > self._params["range"]:
            raise WallarooParameterError(
                f"{where}: the slide ({slide} ns) is longer than the range "
                f"({self._params['range']} ns); messages between windows would be lost")
        clone = self._with(call, slide=slide)
        clone._slid = True
        return clone

    def _with(self, call: str, **changes) -> "RangeWindowsBuilder":
        clone = super()._with(call, **changes)
        clone._slid = self._slid
        return clone


class SessionWindowsBuilder(_EventTimeWindowsBuilder):
    """Per key, a window of messages less than ``gap`` ns apart: ``session_windows(gap)``.

    A session closes once the watermark passes its last message's time plus the gap (plus the
    delay).

    Example::

        >>> SessionWindowsBuilder(30).with_late_data_policy("fire-per-message").params
        {'gap': 30, 'delay': 0, 'late_data_policy': 'fire-per-message'}
    """

    kind = "session"

    def __init__(self, gap: int):
        call = f"session_windows({gap!r})"
        super().__init__({"gap": _nanoseconds(gap, call), "delay": 0, "late_data_policy": "drop"},
                         call)


def count_windows(count: int) -> CountWindowsBuilder:
    """Start a count window: per key, ``count_windows(n).over(Agg)`` emits every n messages.

    Example::

        >>> class Sum(Aggregation):
        ...     def initial_accumulator(self): return [0]
        ...     def update(self, data, acc): acc[0] += data
        ...     def combine(self, a, b): return [a[0] + b[0]]
        ...     def output(self, key, acc): return acc[0]
        >>> count_windows(2).over(Sum).kind
        'count'
    """
    return CountWindowsBuilder(count)


def range_windows(range_ns: int) -> RangeWindowsBuilder:
    """Start an event-time window of ``range_ns`` nanoseconds (tumbling unless given a slide).

    Example::

        >>> range_windows(1_000).with_slide(250).params["slide"]
        250
    """
    return RangeWindowsBuilder(range_ns)


def session_windows(gap_ns: int) -> SessionWindowsBuilder:
    """Start a session window: per key, messages closer than ``gap_ns`` in event time.

    Example::

        >>> session_windows(5_000).params["gap"]
        5000
    """
    return SessionWindowsBuilder(gap_ns)


def _nanoseconds(value: Any, where: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WallarooParameterError(
            f"{where}: times are whole nanoseconds (an int); got {type(value).__name__} "
            f"{value!r}: use wallaroo.seconds(...), wallaroo.milliseconds(...) and friends")
    if value < 0 or (value == 0 and not allow_zero):
        wanted = "zero or more" if allow_zero else "more than zero"
        raise WallarooParameterError(f"{where}: must be {wanted} nanoseconds, not {value}")
    if value >= DURATION_BOUND:
        raise WallarooParameterError(
            f"{where}: {value} ns is too long; windows, slides, gaps and delays must be shorter "
            f"than {DURATION_BOUND} ns (about 36 years)")
    return value


def _instantiate(aggregation: Any, call: str) -> Any:
    if inspect.isclass(aggregation):
        try:
            return aggregation()
        except TypeError as exc:
            raise WallarooParameterError(
                f"{call}.over({aggregation.__name__}): the aggregation class must be creatable "
                f"with no arguments ({exc})") from None
    if inspect.isroutine(aggregation) or isinstance(aggregation, (int, float, str, bytes)):
        raise WallarooParameterError(
            f"{call}.over(...) expects an Aggregation class; got {type(aggregation).__name__} "
            f"{aggregation!r}")
    return aggregation


def _check_aggregation(agg: Any, call: str) -> bool:
    """Check the Aggregation contract; True when ``output`` takes the window too."""
    cls = type(agg).__name__
    for method, signature in _AGGREGATION_METHODS.items():
        impl = getattr(type(agg), method, None)
        if not callable(impl) or impl is getattr(Aggregation, method):
            raise WallarooParameterError(
                f"{call}.over({cls}): {cls} has no {method} method; an aggregation defines "
                f"{', '.join(_AGGREGATION_METHODS.values())}")
    if not callable(getattr(agg, "name", None)):
        raise WallarooParameterError(
            f"{call}.over({cls}): {cls} has no name() method; subclass wallaroo.Aggregation")
    try:
        params = inspect.signature(agg.output).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if 2 <= len(positional) and len(required) <= 3:
        return len(positional) >= 3
    raise WallarooParameterError(
        f"{call}.over({cls}): {cls}.output must take (key, acc) or (key, acc, window); its "
        f"signature is {inspect.signature(agg.output)}")
