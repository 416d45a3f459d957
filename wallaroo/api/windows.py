"""Windows over keyed streams: ``count_windows(n).over(Agg)`` and ``range_windows(r)...over(Agg)``.

The builders record what the application asks for; the engine that runs windows comes with the
windowing work, and until then a run that uses them stops at start with a clear message.

Example::

    >>> import wallaroo
    >>> class Total(wallaroo.Aggregation):
    ...     def initial_accumulator(self): return [0]
    ...     def update(self, data, acc): acc[0] += data
    ...     def combine(self, a, b): return [a[0] + b[0]]
    ...     def output(self, key, acc): return acc[0]
    >>> wallaroo.count_windows(3).over(Total).describe()
    'count_windows(3).over(Total)'
"""
from __future__ import annotations


class Aggregation:
    """Base class of window aggregations: subclass it and define the four methods.

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

    Example::

        >>> WindowSpec("count", {"count": 2}, Aggregation).describe()
        'count_windows(2).over(Aggregation)'
    """

    def __init__(self, kind: str, params: dict, aggregation: type):
        self.kind = kind
        self.params = params
        self.aggregation = aggregation

    def name(self) -> str:
        """The stage name: the aggregation class name."""
        return getattr(self.aggregation, "__name__", repr(self.aggregation))

    def describe(self) -> str:
        """The builder call this window came from."""
        args = ", ".join(str(v) for v in self.params.values())
        return f"{self.kind}_windows({args}).over({self.name()})"


class CountWindowsBuilder:
    """Per key, emit every ``count`` messages: ``count_windows(n).over(Agg)``.

    Example::

        >>> CountWindowsBuilder(5).over(Aggregation).params
        {'count': 5}
    """

    def __init__(self, count: int):
        self._count = count

    def over(self, aggregation: type) -> WindowSpec:
        """Finish the window with an Aggregation class."""
        return WindowSpec("count", {"count": self._count}, aggregation)


class RangeWindowsBuilder:
    """Event-time windows of ``range_ns``: tumbling, or sliding ``.with_slide(s)``.

    Example::

        >>> RangeWindowsBuilder(10).with_slide(5).over(Aggregation).params["slide"]
        5
    """

    def __init__(self, range_ns: int):
        self._params = {"range": range_ns, "slide": None, "delay": 0, "late_data_policy": "drop"}

    def _with(self, **changes) -> "RangeWindowsBuilder":
        clone = RangeWindowsBuilder(self._params["range"])
        clone._params = {**self._params, **changes}
        return clone

    def with_slide(self, slide: int) -> "RangeWindowsBuilder":
        """Sliding windows that start every ``slide`` nanoseconds."""
        return self._with(slide=slide)

    def with_delay(self, delay: int) -> "RangeWindowsBuilder":
        """Fire a window once the watermark passes its end plus ``delay``."""
        return self._with(delay=delay)

    def with_late_data_policy(self, policy: str) -> "RangeWindowsBuilder":
        """What to do with data older than every open window."""
        return self._with(late_data_policy=policy)

    def over(self, aggregation: type) -> WindowSpec:
        """Finish the window with an Aggregation class."""
        return WindowSpec("range", dict(self._params), aggregation)


def count_windows(count: int) -> CountWindowsBuilder:
    """Start a count window: ``count_windows(n).over(Agg)``.

    Example::

        >>> count_windows(2).over(Aggregation).kind
        'count'
    """
    return CountWindowsBuilder(count)


def range_windows(range_ns: int) -> RangeWindowsBuilder:
    """Start an event-time window of ``range_ns`` nanoseconds.

    Example::

        >>> range_windows(1_000).over(Aggregation).kind
        'range'
    """
    return RangeWindowsBuilder(range_ns)
