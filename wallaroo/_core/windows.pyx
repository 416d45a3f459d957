# cython: language_level=3
"""Window operators: range (tumbling and sliding), session and count windows over keyed batches.

Every window op follows its inputs' watermarks. A batch comes from one input (its ``origin``);
each message's event time, then the batch's in-band watermark, raise that input's watermark.
The op's watermark is the minimum over its live inputs and never goes back. An input not heard
from for ``idle_ns`` stops holding it back; when every input is idle, the watermark moves on
with the clock from the highest event time seen. An input at ``WATERMARK_END_OF_INPUT`` has
ended; when all have, every open window fires.

Windows fire right after the message (or the ``tick``) that moved the watermark far enough, so
what comes out does not depend on how input was cut into batches. State is kept per key, as
plain dicts and lists of the user's accumulators, beside the key's state computations.

Example::

    >>> from wallaroo._core.chain import Batch
    >>> class Total:
    ...     def initial_accumulator(self): return [0]
    ...     def update(self, v, acc): acc[0] += v
    ...     def combine(self, a, b): return [a[0] + b[0]]
    ...     def output(self, key, acc): return (key, acc[0])
    >>> op = RangeWindowOp("sum", Total(), False, None, [0], 10**9, 10, 10, 0, "drop")
    >>> op.process(Batch([1, 2, 3], key="k", event_times=[1, 2, 12], origin=0)).values
    [('k', 3)]
"""
cimport cython
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport int64_t
from wallaroo._core.chain cimport (
    Batch, Op, DURATION_LIMIT, END_OF_INPUT, NEW, NO_WATERMARK, monotonic_ns,
)
from wallaroo._core.chain import StopBatch

import bisect
import heapq
import logging
import time

log = logging.getLogger("wallaroo")

# Past every window end: the frontier once all input has ended.
cdef int64_t EVERYTHING = END_OF_INPUT + 2 * DURATION_LIMIT

cdef enum:
    DROP = 0
    FIRE_PER_MESSAGE = 1
    PLACE_IN_OLDEST = 2

_POLICIES = {"drop": DROP, "fire-per-message": FIRE_PER_MESSAGE,
             "place-in-oldest-window": PLACE_IN_OLDEST}


cdef inline int64_t floor_div(int64_t a, int64_t b):
    """a // b rounded towards minus infinity (b > 0)."""
    cdef int64_t q = a / b
    if a % b != 0 and a < 0:
        q -= 1
    return q


cdef class WindowOp(Op):
    """What every window op shares: inputs and watermarks, the per-message loop, firing.

    ``agg`` is the Aggregation instance; ``with_window`` says whether its ``output`` takes the
    window; ``inputs`` lists the origins whose batches reach this op, ``window_inputs`` those of
    them that are windows; ``idle_ns`` is the idle timeout. ``late`` counts late messages dropped; ``origin`` is what this op's own output
    batches are marked with (its name unless set).
    """

    cdef object agg
    cdef object initial
    cdef object update
    cdef object combine
    cdef object output
    cdef bint with_window
    cdef dict input_index
    cdef Py_ssize_t n_inputs
    cdef int64_t *input_marks
    cdef int64_t *last_heard
    cdef char *marks_each_message   # 1: each message's event time raises the input's watermark
    cdef int64_t highest_seen       # the highest watermark any input gave before it ended
    cdef int64_t promised           # the highest watermark this op has sent on (not the end)
    cdef int64_t idle_ns
    cdef int64_t delay
    cdef readonly int64_t watermark
    cdef int64_t frontier           # windows ending at or before this have fired
    cdef readonly unsigned long long late
    cdef public object origin
    cdef bint stopped

    def __cinit__(self, *args, **kwargs):
        self.input_marks = NULL
        self.last_heard = NULL
        self.marks_each_message = NULL

    def __init__(self, str name, agg, bint with_window, errors, list inputs, int64_t idle_ns,
                 window_inputs=()):
        Op.__init__(self, name, None, errors)
        self.sees_watermarks = True
        self.keys_effect = NEW
        self.times_effect = NEW
        self.agg = agg
        self.initial = agg.initial_accumulator
        self.update = agg.update
        self.combine = agg.combine
        self.output = agg.output
        self.with_window = with_window
        self.input_index = {origin: i for i, origin in enumerate(inputs)}
        self.n_inputs = len(inputs)
        self.input_marks = <int64_t *>PyMem_Malloc(max(1, self.n_inputs) * sizeof(int64_t))
        self.last_heard = <int64_t *>PyMem_Malloc(max(1, self.n_inputs) * sizeof(int64_t))
        self.marks_each_message = <char *>PyMem_Malloc(max(1, self.n_inputs))
        if (self.input_marks == NULL or self.last_heard == NULL
                or self.marks_each_message == NULL):
            raise MemoryError()
        cdef int64_t now = time.monotonic_ns()
        for i, origin in enumerate(inputs):
            self.input_marks[i] = NO_WATERMARK
            self.last_heard[i] = now
            # a source's watermark is its highest event time so far, message by message; the
            # outputs of a window upstream come in no event-time order, so from a window only
            # its in-band watermark counts
            self.marks_each_message[i] = origin not in window_inputs
        self.highest_seen = NO_WATERMARK
        self.promised = NO_WATERMARK
        self.idle_ns = idle_ns
        self.delay = 0
        self.watermark = NO_WATERMARK
        self.frontier = NO_WATERMARK
        self.late = 0
        self.origin = name
        self.stopped = False

    def __dealloc__(self):
        PyMem_Free(self.input_marks)
        PyMem_Free(self.last_heard)
        PyMem_Free(self.marks_each_message)

    # -- watermarks ------------------------------------------------------------------------

    cdef int64_t combined_mark(self, int64_t now):
        """The minimum over live inputs (END_OF_INPUT once all have ended); when every input
        still open is idle, the highest watermark seen plus the time since any was heard."""
        cdef Py_ssize_t i
        cdef int64_t low = END_OF_INPUT, heard = 0
        cdef bint any_live = False, any_open = False
        for i in range(self.n_inputs):
            if self.last_heard[i] > heard:
                heard = self.last_heard[i]
            if self.input_marks[i] >= END_OF_INPUT:
                continue
            any_open = True
            if now - self.last_heard[i] < self.idle_ns:
                any_live = True
                if self.input_marks[i] < low:
                    low = self.input_marks[i]
        if any_live or not any_open:
            return low
        if self.highest_seen == NO_WATERMARK:
            return NO_WATERMARK
        return min(self.highest_seen + max(now - heard, 0), END_OF_INPUT - 1)

    cdef int raise_input(self, Py_ssize_t i, int64_t mark, int64_t now) except -1:
        """Input ``i`` promises ``mark``: move the op's watermark and fire what is due."""
        cdef int64_t combined
        if mark <= self.input_marks[i]:
            return 0
        self.input_marks[i] = mark
        if mark < END_OF_INPUT and mark > self.highest_seen:
            self.highest_seen = mark
        if self.n_inputs == 1:
            combined = mark
        else:
            combined = self.combined_mark(now)
        if combined > self.watermark:
            self.move_watermark(combined)
        return 0

    cdef int refresh(self, int64_t now) except -1:
        """Re-read the inputs (one may have gone idle) and fire what is due."""
        cdef int64_t combined = self.combined_mark(now)
        if combined > self.watermark:
            self.move_watermark(combined)
        return 0

    cdef int move_watermark(self, int64_t mark) except -1:
        self.watermark = mark
        self.frontier = EVERYTHING if mark >= END_OF_INPUT else mark - self.delay
        return self.advance()

    cdef int64_t output_mark(self):
        """The watermark this op sends downstream with its outputs: its frontier, since every
        later output belongs to a window ending after it."""
        return self.watermark if self.watermark >= END_OF_INPUT else self.frontier

    # -- the per-message loop -----------------------------------------------------------------

    cdef int consume(self, Batch batch) except -1:
        cdef list values = batch.values
        cdef list keys = batch.keys
        cdef list groups = batch.groups
        cdef list times = batch.event_times
        cdef Py_ssize_t i = 0, n = len(values)
        cdef int64_t t, started, now = time.monotonic_ns()
        idx = self.input_index.get(batch.origin)
        if idx is None:
            raise ValueError(f"window {self.name!r} got a batch from {batch.origin!r}, which "
                             f"is not one of its inputs {list(self.input_index)}")
        cdef Py_ssize_t input_i = idx
        self.last_heard[input_i] = now
        try:
            while i < n and not self.stopped:
                try:
                    while i < n and not self.stopped:
                        t = batch.ingest_ns if times is None else times[i]
                        started = monotonic_ns() if self.sampled() else 0
                        if keys is None:
                            self.place(batch.key, batch.group, t, values[i], now)
                        else:
                            self.place(keys[i], groups[i], t, values[i], now)
                        if started:
                            self.timed(started)
                        if self.marks_each_message[input_i]:
                            self.raise_input(input_i, t, now)
                        i += 1
                except Exception as exc:
                    if not self.errors.user_error(self.name, values[i], exc):
                        self.stopped = True
                    i += 1
            if batch.watermark != NO_WATERMARK and not self.stopped:
                self.raise_input(input_i, batch.watermark, now)
            if self.n_inputs > 1:
                self.refresh(now)
        except StopBatch:  # a stage after the window stopped the run
            self.stopped = True
        self.processed += n
        return 0

    cdef int finish_batch(self, Batch out) except -1:
        out.origin = self.origin
        out.watermark = self.output_mark()
        if self.promised < out.watermark < END_OF_INPUT:
            self.promised = out.watermark
        return 0

    cdef bint time_passes(self, int64_t now) except -1:
        cdef int64_t before = self.watermark
        if not self.stopped:
            try:
                self.refresh(now)
                self.on_tick(now)
            except StopBatch:
                self.stopped = True
        return self.watermark != before

    # -- what each kind of window defines ---------------------------------------------------

    cdef int place(self, object key, object group, int64_t t, object value, int64_t now) except -1:
        raise NotImplementedError

    cdef int advance(self) except -1:
        """The watermark moved: fire the windows that are due."""
        return 0

    cdef int on_tick(self, int64_t now) except -1:
        return 0

    def take_state(self, key):
        """Remove ``key``'s open windows from this op and return them as plain data (lists,
        dicts and the user's accumulators) that ``restore_state`` accepts, or None."""
        raise NotImplementedError

    def restore_state(self, key, state):
        """Adopt ``key``'s open windows, as returned by ``take_state`` (possibly by another op
        of the same window, after pickling)."""
        raise NotImplementedError

    def dump_states(self):
        """Every key's open windows, ``{key: what take_state would return}``, left in place
        (a checkpoint pickles them at once)."""
        raise NotImplementedError

    def load_states(self, states):
        """Adopt the open windows of every key in ``states`` (as ``dump_states`` gave them).

        Example::

            >>> from wallaroo._core.chain import Batch
            >>> class Count:
            ...     def initial_accumulator(self): return [0]
            ...     def update(self, v, acc): acc[0] += 1
            ...     def combine(self, a, b): return [a[0] + b[0]]
            ...     def output(self, key, acc): return acc[0]
            >>> a = CountWindowOp("n", Count(), False, None, [0], 10**9, 3, 0)
            >>> _ = a.process(Batch([1, 2], keys=["k", "k"], groups=[0, 0], origin=0))
            >>> b = CountWindowOp("n", Count(), False, None, [0], 10**9, 3, 0)
            >>> b.load_states(a.dump_states())
            >>> b.process(Batch([3], keys=["k"], groups=[0], origin=0)).values
            [3]
        """
        for key, state in states.items():
            self.restore_state(key, state)

    def dump_progress(self):
        """How far this op has got (a checkpoint holds it with the open windows): its
        watermark, the windows already fired, and each input's watermark, by origin.

        Example::

            >>> from wallaroo._core.chain import Batch
            >>> class Count:
            ...     def initial_accumulator(self): return [0]
            ...     def update(self, v, acc): acc[0] += 1
            ...     def combine(self, a, b): return [a[0] + b[0]]
            ...     def output(self, key, acc): return acc[0]
            >>> a = RangeWindowOp("n", Count(), False, None, [0], 10**12, 10, 10, 0, "drop")
            >>> a.process(Batch([1, 1], keys=["k", "k"], groups=[0, 0], event_times=[3, 15],
            ...                 origin=0)).values
            [1]
            >>> b = RangeWindowOp("n", Count(), False, None, [0], 10**12, 10, 10, 0, "drop")
            >>> b.load_progress(a.dump_progress()); b.load_states(a.dump_states())
            >>> b.process(Batch([1], keys=["k"], groups=[0], event_times=[4], origin=0)).values, b.late
            ([], 1)
        """
        return {"watermark": self.watermark, "frontier": self.frontier,
                "promised": self.promised, "highest_seen": self.highest_seen,
                "inputs": {origin: self.input_marks[i] for origin, i in self.input_index.items()}}

    def load_progress(self, progress):
        """Take up where ``dump_progress`` left off (before ``load_states``)."""
        cdef int64_t now = time.monotonic_ns()
        self.watermark = progress["watermark"]
        self.frontier = progress["frontier"]
        self.promised = progress["promised"]
        self.highest_seen = progress["highest_seen"]
        for origin, mark in progress["inputs"].items():
            i = self.input_index.get(origin)
            if i is not None:
                self.input_marks[<Py_ssize_t>i] = mark
                self.last_heard[<Py_ssize_t>i] = now

    # -- shared helpers -----------------------------------------------------------------------

    cdef int emit(self, object key, object group, object acc, int64_t start, int64_t end,
                  int64_t event_time) except -1:
        """Call the aggregation's output and emit its result (None emits nothing). A failing
        output is the aggregation's error: reported, and the run goes on or stops by policy."""
        try:
            if self.with_window:
                r = self.output(key, acc, (start, end))
            else:
                r = self.output(key, acc)
        except Exception as exc:
            if not self.errors.user_error(self.name, (key, (start, end)), exc):
                self.stopped = True
            return 0
        if r is not None:
            self.next.push(r, key, group, event_time)
        return 0

    cdef int fire_alone(self, object key, object group, object value, int64_t start,
                        int64_t end) except -1:
        """The fire-per-message policy: a fresh accumulator with only this value, emitted at
        once as the late message's own window (event time: its end - 1, like every output)."""
        acc = self.initial()
        self.update(value, acc)
        return self.emit(key, group, acc, start, end, end - 1)

    cdef int dropped_late(self, object key, int64_t t) except -1:
        self.late += 1
        if self.late == 1:
            log.warning("window %r: dropped late data (key %r, event time %d ns, watermark %d "
                        "ns); further late messages are counted, not logged. Give the window a "
                        "delay (with_delay) or another late-data policy to keep them",
                        self.name, key, t, self.watermark)
        return 0


@cython.final
cdef class RangeWindowOp(WindowOp):
    """Epoch-aligned windows ``[k*slide, k*slide + range)``, kept as panes.

    A pane is ``gcd(range, slide)`` long; each value updates the one pane it falls in, and a
    window combines its panes when it fires, once the watermark reaches its end plus ``delay``.

    Example::

        >>> from wallaroo._core.chain import Batch
        >>> class Items:
        ...     def initial_accumulator(self): return []
        ...     def update(self, v, acc): acc.append(v)
        ...     def combine(self, a, b): return a + b
        ...     def output(self, key, acc, window): return (window, acc)
        >>> op = RangeWindowOp("items", Items(), True, None, [0], 10**9, 10, 5, 0, "drop")
        >>> op.process(Batch([1, 2, 3], key="k", event_times=[1, 7, 20], origin=0)).values
        [((-5, 5), [1]), ((0, 10), [1, 2]), ((5, 15), [2])]
    """

    cdef int64_t range_ns
    cdef int64_t slide
    cdef int64_t pane
    cdef int policy
    cdef dict panes_of_key      # key -> {pane index: accumulator}
    cdef dict keys_of_pane      # pane index -> {key: key group}, in order of arrival
    cdef list live_panes        # pane indexes with data, sorted
    cdef int64_t next_window    # no window before this index is still to fire
    cdef object pane_order      # a restored checkpoint's order of keys in each pane

    def __init__(self, str name, agg, bint with_window, errors, list inputs, int64_t idle_ns,
                 int64_t range_ns, int64_t slide, int64_t delay, str policy, window_inputs=()):
        WindowOp.__init__(self, name, agg, with_window, errors, inputs, idle_ns, window_inputs)
        self.range_ns = range_ns
        self.slide = slide
        self.pane = _gcd(range_ns, slide)
        self.delay = delay
        self.policy = _POLICIES[policy]
        self.panes_of_key = {}
        self.keys_of_pane = {}
        self.live_panes = []
        self.pane_order = None
        # no window has fired yet: not even one reaching back before the earliest event time
        self.next_window = floor_div(NO_WATERMARK - range_ns, slide)

    @property
    def keys(self):
        """The keys with open windows."""
        return list(self.panes_of_key)

    cdef inline int64_t first_open_window(self):
        """The first window that has not fired."""
        cdef int64_t w = floor_div(self.frontier - self.range_ns, self.slide) + 1
        return w if w > self.next_window else self.next_window

    cdef int place(self, object key, object group, int64_t t, object value, int64_t now) except -1:
        cdef int64_t last = floor_div(t, self.slide)
        if last * self.slide + self.range_ns <= self.frontier:
            if self.policy == DROP:
                return self.dropped_late(key, t)
            if self.policy == FIRE_PER_MESSAGE:
                return self.fire_alone(key, group, value, last * self.slide,
                                       last * self.slide + self.range_ns)
            t = self.first_open_window() * self.slide
        self.add(key, group, floor_div(t, self.pane), value)
        return 0

    cdef inline int add(self, object key, object group, int64_t pane, object value) except -1:
        panes = self.panes_of_key.get(key)
        acc = None if panes is None else panes.get(pane)
        if acc is not None:
            self.update(value, acc)
            return 0
        acc = self.initial()
        self.update(value, acc)  # if either raises, nothing is kept for this message
        return self.new_pane(key, group, pane, acc)

    cdef int new_pane(self, object key, object group, int64_t pane, object acc) except -1:
        """Keep ``acc`` as ``key``'s pane (which must not exist yet)."""
        panes = self.panes_of_key.get(key)
        if panes is None:
            panes = {}
            self.panes_of_key[key] = panes
        if pane in panes:
            raise ValueError(f"window {self.name!r}: key {key!r} already has pane {pane}")
        panes[pane] = acc
        keys = self.keys_of_pane.get(pane)
        if keys is None:
            keys = {}
            self.keys_of_pane[pane] = keys
            if not self.live_panes or pane > self.live_panes[len(self.live_panes) - 1]:
                self.live_panes.append(pane)
            else:
                bisect.insort(self.live_panes, pane)
        keys[key] = group
        return 0

    cdef int advance(self) except -1:
        cdef int64_t frontier = self.frontier, pane, window, first, start
        cdef int64_t per_window = self.range_ns // self.pane
        while self.live_panes and not self.stopped:
            pane = self.live_panes[0]
            # the first window holding this pane that has not fired yet
            first = floor_div(pane * self.pane - self.range_ns, self.slide) + 1
            window = first if first > self.next_window else self.next_window
            start = window * self.slide
            if start + self.range_ns > frontier:
                break
            self.fire(window, floor_div(start, self.pane), per_window)
            self.next_window = window + 1
            self.free_panes_before((window + 1) * self.slide)
        window = floor_div(frontier - self.range_ns, self.slide) + 1
        if window > self.next_window:
            self.next_window = window
        return 0

    cdef int fire(self, int64_t window, int64_t first_pane, int64_t per_window) except -1:
        """Emit window ``window`` for every key with data in it. Only panes that hold data are
        visited: the live panes in the window, and each key's own panes, in time order."""
        cdef int64_t start = window * self.slide, end = start + self.range_ns
        cdef int64_t last_pane = first_pane + per_window
        cdef dict keys = {}
        cdef list panes_in_window = self.live_panes[
            bisect.bisect_left(self.live_panes, first_pane):
            bisect.bisect_left(self.live_panes, last_pane)]
        if per_window == 1:
            for pane in panes_in_window:
                for key, group in (<dict>self.keys_of_pane[pane]).items():
                    self.emit(key, group, self.panes_of_key[key][pane], start, end, end - 1)
                    if self.stopped:
                        return 0
            return 0
        for pane in panes_in_window:
            for key, group in (<dict>self.keys_of_pane[pane]).items():
                if key not in keys:
                    keys[key] = group
        for key, group in keys.items():
            panes = <dict>self.panes_of_key[key]
            try:
                acc = self.initial()
                for pane in sorted(panes) if len(panes) < len(panes_in_window) else panes_in_window:
                    if first_pane <= pane < last_pane:
                        part = panes.get(pane)
                        if part is not None:
                            acc = self.combine(acc, part)
            except Exception as exc:  # this key's window is lost; the others still fire
                if not self.errors.user_error(self.name, (key, (start, end)), exc):
                    self.stopped = True
                    return 0
                continue
            self.emit(key, group, acc, start, end, end - 1)
            if self.stopped:
                return 0
        return 0

    def take_state(self, key):
        """``(group, {pane index: accumulator})`` for ``key``, or None.

        Example::

            >>> from wallaroo._core.chain import Batch
            >>> class Sum:
            ...     def initial_accumulator(self): return [0]
            ...     def update(self, v, acc): acc[0] += v
            ...     def combine(self, a, b): return [a[0] + b[0]]
            ...     def output(self, key, acc): return acc[0]
            >>> op = RangeWindowOp("sum", Sum(), False, None, [0], 10**9, 10, 10, 0, "drop")
            >>> op.process(Batch([1, 2], key="k", group=3, event_times=[1, 12], origin=0)).values
            [1]
            >>> op.take_state("k"), op.keys
            ((3, {1: [2]}), [])
        """
        panes = self.panes_of_key.pop(key, None)
        if panes is None:
            return None
        group = None
        for pane in panes:
            keys = <dict>self.keys_of_pane[pane]
            group = keys.pop(key)
            if not keys:
                del self.keys_of_pane[pane]
                self.live_panes.remove(pane)
        return (group, panes)

    def dump_progress(self):
        progress = WindowOp.dump_progress(self)
        progress["next_window"] = self.next_window
        # the order keys reached each pane is the order a window fires them in
        progress["pane_keys"] = {pane: list(keys) for pane, keys in self.keys_of_pane.items()}
        return progress

    def load_progress(self, progress):
        WindowOp.load_progress(self, progress)
        self.next_window = progress["next_window"]
        self.pane_order = progress["pane_keys"]

    def load_states(self, states):
        WindowOp.load_states(self, states)
        order, self.pane_order = self.pane_order, None
        for pane, keys in (order or {}).items():
            placed = self.keys_of_pane.get(pane)
            if placed is not None:
                self.keys_of_pane[pane] = {key: placed[key] for key in keys if key in placed}

    def dump_states(self):
        panes_of_key = self.panes_of_key
        keys_of_pane = self.keys_of_pane
        return {key: ((<dict>keys_of_pane[next(iter(panes))])[key], panes)
                for key, panes in panes_of_key.items()}

    def restore_state(self, key, state):
        """Adopt the panes; those whose every window has already fired here (this op is ahead
        of the one they come from) are counted as late and dropped."""
        group, panes = state
        for pane, acc in panes.items():
            last = floor_div(pane * self.pane, self.slide)
            if last * self.slide + self.range_ns <= self.frontier:
                self.dropped_late(key, pane * self.pane)
            else:
                self.new_pane(key, group, pane, acc)

    cdef int free_panes_before(self, int64_t time) except -1:
        """Drop the panes whose every window has fired: those starting before ``time``."""
        cdef Py_ssize_t cut = bisect.bisect_left(self.live_panes, floor_div(time - 1, self.pane) + 1)
        freed = self.live_panes[:cut]
        del self.live_panes[:cut]
        for pane in freed:
            for key in self.keys_of_pane.pop(pane):
                panes = <dict>self.panes_of_key[key]
                del panes[pane]
                if not panes:
                    del self.panes_of_key[key]
        return 0



@cython.final
cdef class SessionWindowOp(WindowOp):
    """Per key, sessions of messages less than ``gap`` apart in event time.

    A session ``(first, last + gap)`` fires once the watermark reaches ``last + gap + delay``;
    a message within ``gap`` of open sessions joins them (and may merge two).

    Example::

        >>> from wallaroo._core.chain import Batch
        >>> class Items:
        ...     def initial_accumulator(self): return []
        ...     def update(self, v, acc): acc.append(v)
        ...     def combine(self, a, b): return a + b
        ...     def output(self, key, acc, window): return (window, acc)
        >>> op = SessionWindowOp("s", Items(), True, None, [0], 10**9, 5, 0, "drop")
        >>> op.process(Batch([1, 2, 3], key="k", event_times=[0, 3, 20], origin=0)).values
        [((0, 8), [1, 2])]
    """

    cdef int64_t gap
    cdef int policy
    cdef dict sessions_of_key   # key -> [[first, last, acc, group], ...] sorted by first
    cdef dict scheduled         # key -> the end its entry in the heap is due at
    cdef list due               # heap of (end, sequence, key)
    cdef unsigned long long sequence

    def __init__(self, str name, agg, bint with_window, errors, list inputs, int64_t idle_ns,
                 int64_t gap, int64_t delay, str policy, window_inputs=()):
        WindowOp.__init__(self, name, agg, with_window, errors, inputs, idle_ns, window_inputs)
        self.gap = gap
        self.delay = delay
        self.policy = _POLICIES[policy]
        self.sessions_of_key = {}
        self.scheduled = {}
        self.due = []
        self.sequence = 0

    @property
    def keys(self):
        """The keys with open sessions."""
        return list(self.sessions_of_key)

    cdef int place(self, object key, object group, int64_t t, object value, int64_t now) except -1:
        cdef list sessions = self.sessions_of_key.get(key)
        cdef list joined = []
        cdef list session
        if sessions is not None:
            for session in sessions:
                if t + self.gap > <int64_t>session[0] and t < <int64_t>session[1] + self.gap:
                    joined.append(session)
        if not joined:
            if t + self.gap <= self.frontier:
                if self.policy == DROP:
                    return self.dropped_late(key, t)
                if self.policy == FIRE_PER_MESSAGE:
                    return self.fire_alone(key, group, value, t, t + self.gap)
                if sessions:
                    self.update(value, sessions[0][2])
                    return 0
                t = self.frontier
            acc = self.initial()
            self.update(value, acc)  # if either raises, nothing is kept for this message
            session = [t, t, acc, group]
            if sessions is None:
                sessions = []
                self.sessions_of_key[key] = sessions
            sessions.append(session)
            sessions.sort(key=_first)
        else:
            session = joined[0]
            self.update(value, session[2])  # first: if it raises, no session changes
            for other in joined[1:]:
                merged = self.combine(session[2], other[2])  # may raise: change nothing before
                session[0] = min(session[0], other[0])
                session[1] = max(session[1], other[1])
                session[2] = merged
                sessions[:] = [s for s in sessions if s is not other]
            if t < session[0]:
                session[0] = t
            if t > session[1]:
                session[1] = t
        self.schedule(key, sessions)
        return 0

    cdef int schedule(self, object key, list sessions) except -1:
        """Make sure the heap holds an entry for ``key`` no later than its first session end."""
        cdef int64_t end = min(<int64_t>s[1] for s in sessions) + self.gap
        current = self.scheduled.get(key)
        if current is None or end < current:
            self.scheduled[key] = end
            self.sequence += 1
            heapq.heappush(self.due, (end, self.sequence, key))
        return 0

    def dump_states(self):
        return dict(self.sessions_of_key)

    def take_state(self, key):
        """``[[first, last, accumulator, group], ...]`` for ``key``, or None."""
        self.scheduled.pop(key, None)  # its heap entry, if any, is now stale
        return self.sessions_of_key.pop(key, None)

    def restore_state(self, key, state):
        if key in self.sessions_of_key:
            raise ValueError(f"window {self.name!r}: key {key!r} already has open sessions")
        sessions = sorted((list(s) for s in state), key=_first)
        self.sessions_of_key[key] = sessions
        self.schedule(key, sessions)

    cdef int advance(self) except -1:
        cdef int64_t frontier = self.frontier
        while self.due and self.due[0][0] <= frontier and not self.stopped:
            end, _, key = heapq.heappop(self.due)
            if self.scheduled.get(key) != end:
                continue  # a stale entry: the key was rescheduled earlier
            del self.scheduled[key]
            sessions = self.sessions_of_key[key]
            remaining = []
            for session in sorted(sessions, key=_last):
                if session[1] + self.gap <= frontier:
                    self.emit(key, session[3], session[2], session[0], session[1] + self.gap,
                              session[1] + self.gap - 1)
                else:
                    remaining.append(session)
            if remaining:
                self.sessions_of_key[key] = remaining
                self.schedule(key, remaining)
            else:
                del self.sessions_of_key[key]
        return 0



@cython.final
cdef class CountWindowOp(WindowOp):
    """Per key, emit every ``count`` messages; a partly filled window is emitted once its first
    message is ``timeout_ns`` old (wall clock), and at the end of the input.

    The window passed to a three-parameter ``output`` spans the event times of its messages.

    Example::

        >>> from wallaroo._core.chain import Batch
        >>> class Total:
        ...     def initial_accumulator(self): return [0]
        ...     def update(self, v, acc): acc[0] += v
        ...     def combine(self, a, b): return [a[0] + b[0]]
        ...     def output(self, key, acc): return acc[0]
        >>> op = CountWindowOp("sum", Total(), False, None, [0], 10**9, 2, 10**9)
        >>> op.process(Batch([1, 2, 3], key="k", origin=0)).values
        [3]
    """

    cdef Py_ssize_t count
    cdef int64_t timeout_ns
    cdef dict open_windows      # key -> [count, acc, first time, last time, started, group]

    def __init__(self, str name, agg, bint with_window, errors, list inputs, int64_t idle_ns,
                 Py_ssize_t count, int64_t timeout_ns, window_inputs=()):
        WindowOp.__init__(self, name, agg, with_window, errors, inputs, idle_ns, window_inputs)
        self.count = count
        self.timeout_ns = timeout_ns
        self.open_windows = {}

    @property
    def keys(self):
        """The keys with a partly filled window, oldest first."""
        return list(self.open_windows)

    cdef int place(self, object key, object group, int64_t t, object value, int64_t now) except -1:
        cdef list window = self.open_windows.get(key)
        if window is None:
            acc = self.initial()
            self.update(value, acc)  # if either raises, nothing is kept for this message
            window = [0, acc, t, t, now, group]
            self.open_windows[key] = window
        else:
            self.update(value, window[1])
        window[0] += 1
        if t < <int64_t>window[2]:
            window[2] = t
        if t > <int64_t>window[3]:
            window[3] = t
        if <Py_ssize_t>window[0] >= self.count:
            del self.open_windows[key]
            self.emit_window(key, window)
        return 0

    def dump_states(self):
        return dict(self.open_windows)

    def take_state(self, key):
        """``[count, accumulator, first time, last time, started, group]`` for ``key``'s partly
        filled window, or None (``started`` is a monotonic clock reading of this process)."""
        return self.open_windows.pop(key, None)

    def restore_state(self, key, state):
        if key in self.open_windows:
            raise ValueError(f"window {self.name!r}: key {key!r} already has an open window")
        window = list(state)
        window[4] = time.monotonic_ns()  # the clock of another process means nothing here
        self.open_windows[key] = window

    cdef int emit_window(self, object key, list window) except -1:
        """Emit a count window. Its event time is its last message's, or the watermark this op
        has already sent on when that is later: count windows fill in no event-time order, and
        an output must not fall behind that promise."""
        cdef int64_t last = window[3]
        return self.emit(key, window[5], window[1], window[2], last + 1,
                         last if last > self.promised else self.promised)

    cdef int advance(self) except -1:
        if self.watermark >= END_OF_INPUT:
            while self.open_windows and not self.stopped:
                key = next(iter(self.open_windows))
                self.emit_window(key, self.open_windows.pop(key))
        return 0

    cdef int on_tick(self, int64_t now) except -1:
        while self.open_windows and not self.stopped:
            key = next(iter(self.open_windows))
            window = self.open_windows[key]
            if now - <int64_t>window[4] < self.timeout_ns:
                break
            del self.open_windows[key]
            self.emit_window(key, window)
        return 0


def _first(session):
    return session[0]


def _last(session):
    return session[1]


cdef int64_t _gcd(int64_t a, int64_t b):
    while b:
        a, b = b, a % b
    return a
