# cython: language_level=3
"""The chain executor: fused stages run as one loop per stage over a batch.

A ``Batch`` is a list of values plus parallel metadata: per-message keys and key groups (or one
key for the whole batch), per-message event times (or the ingest time for all), the input it
came from (``origin``) and, in band, that input's watermark. An ``Op`` turns a batch into the next one; a
``Chain`` runs its ops in order and hands the result to its outputs (further chains or sinks).

``Op.run`` holds the one loop over a batch, inside one ``try``; each op defines ``apply``, its
work on one message. The only per-message Python work is the user's own function call. A user
function that raises is reported to the ``errors`` object (see wallaroo.runtime.errors): bad
input is counted and skipped; a user error either stops the run (``user_error`` returns False:
the rest of the batch is dropped, what came before it flows on) or is skipped, and the loop
resumes at the next message.

Example::

    >>> from wallaroo._core.chain import Batch, Chain, MapOp
    >>> class Print:
    ...     def push(self, batch): print(batch.values)
    >>> Chain([MapOp("double", lambda x: x * 2, None)], [Print()]).push(Batch([1, 2], key="k"))
    [2, 4]
"""
cimport cython
from libc.stdint cimport int64_t
from cpython.datetime cimport datetime, import_datetime
from wallaroo._core.hashing cimport normalize_key, key_group

import_datetime()
_EPOCH = datetime(1970, 1, 1)

#: Watermark of an input that has ended: every window before it can fire.
WATERMARK_END_OF_INPUT = END_OF_INPUT
#: What ``Batch.watermark`` holds when the batch carries no watermark.
WATERMARK_NONE = NO_WATERMARK
#: Event times must lie strictly between minus and plus this many nanoseconds (about 146 years
#: either side of 1970).
EVENT_TIME_BOUND = EVENT_TIME_LIMIT
#: Longest window, slide, gap or delay, in nanoseconds (about 36 years).
DURATION_BOUND = DURATION_LIMIT


cdef class Batch:
    """Values plus metadata. ``keys``/``groups`` are per-message lists, or None when every
    message has ``key``/``group``; ``event_times`` likewise, or None when every message's event
    time is ``ingest_ns``. ``origin`` names the input (a source or window stage) the batch comes
    from, and ``watermark`` is that input's promise that no later message of it has an earlier
    event time (``WATERMARK_NONE`` when the batch makes no promise).

    Example::

        >>> b = Batch(["a", "b"], key="src", ingest_ns=5)
        >>> len(b), b.key_of(1), b.event_time_of(1)
        (2, 'src', 5)
    """

    def __init__(self, list values, list keys=None, object key=None, list groups=None,
                 Py_ssize_t group=0, int64_t ingest_ns=0, list event_times=None,
                 object origin=None, int64_t watermark=NO_WATERMARK):
        self.values = values
        self.keys = keys
        self.key = key
        self.groups = groups
        self.group = group
        self.ingest_ns = ingest_ns
        self.event_times = event_times
        self.origin = origin
        self.watermark = watermark

    def __len__(self):
        return len(self.values)

    def key_of(self, Py_ssize_t i):
        """The key of message ``i``."""
        return self.key if self.keys is None else self.keys[i]

    def event_time_of(self, Py_ssize_t i):
        """The event time of message ``i`` (nanoseconds)."""
        return self.ingest_ns if self.event_times is None else self.event_times[i]

    def __repr__(self):
        return f"<Batch of {len(self.values)}>"


# What an op's output does with per-message metadata: drop keys and event times (decoded or
# encoded values have none yet or need none), keep the input's, set new keys (key_by), set new
# event times (a source's event-time extractor), or set both (window outputs).
cdef enum:
    DROP_KEYS = 0
    KEEP_KEYS = 1
    NEW_KEYS = 2
    NEW_TIMES = 3
    NEW_KEYS_AND_TIMES = 4


@cython.final
cdef class Output:
    """The batch an op is building: values, and the keys, groups and event times that go with
    them.

    ``emit(value, i)`` adds an output of input message ``i``, carrying that message's key and
    event time; the other ``emit_*`` set a new key, a new event time, or both.
    """

    def __cinit__(self, Batch source, int key_mode):
        self.source = source
        self.values = []
        self.copy_keys = (key_mode == KEEP_KEYS or key_mode == NEW_TIMES) and source.keys is not None
        self.copy_times = ((key_mode == KEEP_KEYS or key_mode == NEW_KEYS)
                           and source.event_times is not None)
        if self.copy_keys or key_mode == NEW_KEYS or key_mode == NEW_KEYS_AND_TIMES:
            self.keys = []
            self.groups = []
        if self.copy_times or key_mode == NEW_TIMES or key_mode == NEW_KEYS_AND_TIMES:
            self.event_times = []

    cdef inline int emit(self, object value, Py_ssize_t i) except -1:
        self.values.append(value)
        if self.copy_keys:
            self.keys.append(self.source.keys[i])
            self.groups.append(self.source.groups[i])
        if self.copy_times:
            self.event_times.append(self.source.event_times[i])
        return 0

    cdef int emit_keyed(self, object value, object key, object group, Py_ssize_t i) except -1:
        self.values.append(value)
        self.keys.append(key)
        self.groups.append(group)
        if self.copy_times:
            self.event_times.append(self.source.event_times[i])
        return 0

    cdef int emit_timed(self, object value, Py_ssize_t i, int64_t event_time) except -1:
        self.values.append(value)
        if self.copy_keys:
            self.keys.append(self.source.keys[i])
            self.groups.append(self.source.groups[i])
        self.event_times.append(event_time)
        return 0

    cdef int emit_new(self, object value, object key, object group, int64_t event_time) except -1:
        self.values.append(value)
        self.keys.append(key)
        self.groups.append(group)
        self.event_times.append(event_time)
        return 0

    cdef int emit_all(self, object results, Py_ssize_t i, str stage) except -1:
        """Emit each non-None item of a list/tuple result (the *_multi contract)."""
        if type(results) is not list and type(results) is not tuple:
            raise TypeError(f"{stage} must return a list (or None), not {type(results).__name__}")
        for item in results:
            if item is not None:
                self.emit(item, i)
        return 0

    cdef Batch batch(self):
        cdef Batch src = self.source
        cdef Batch b = Batch.__new__(Batch)
        b.values = self.values
        b.keys = self.keys
        b.groups = self.groups
        b.key = src.key
        b.group = src.group
        b.ingest_ns = src.ingest_ns
        b.event_times = self.event_times
        b.origin = src.origin
        b.watermark = src.watermark
        return b


cdef class Op:
    """One stage of a chain. ``errors`` receives failures (see module docstring).

    ``bad_input_kind`` is None for stages running user logic (their failures follow the error
    policy) and names the kind for stages whose failures mean bad input (decoder, key extractor).

    Example::

        >>> MapOp("inc", lambda x: x + 1, None).name
        'inc'
    """

    key_mode = KEEP_KEYS

    def __init__(self, str name, fn, errors):
        self.name = name
        self.fn = fn
        self.errors = errors
        self.processed = 0
        self.bad_input_kind = None
        self.sees_watermarks = False

    cdef int apply(self, object value, Py_ssize_t i, Output out) except -1:
        out.emit(value, i)
        return 0

    cdef Batch run(self, Batch batch):
        cdef list values = batch.values
        cdef Output out = Output(batch, self.key_mode)
        cdef Py_ssize_t i = 0, n = len(values)
        while i < n:
            try:
                while i < n:
                    self.apply(values[i], i, out)
                    i += 1
            except Exception as exc:
                if self.bad_input_kind is not None:
                    self.errors.bad_input(self.name, self.bad_input_kind, values[i], exc)
                elif not self.errors.user_error(self.name, values[i], exc):
                    break
                i += 1
        self.processed += n
        return out.batch()

    def process(self, Batch batch):
        """Run this op alone over a batch (for tests and tools)."""
        return self.run(batch)


cdef class MapOp(Op):
    """``fn(value)``; a None result drops the message.

    Example::

        >>> MapOp("odd", lambda x: x if x % 2 else None, None).process(Batch([1, 2, 3])).values
        [1, 3]
    """

    cdef int apply(self, object value, Py_ssize_t i, Output out) except -1:
        r = self.fn(value)
        if r is not None:
            out.emit(r, i)
        return 0


cdef class FlatMapOp(Op):
    """``fn(value)`` returns a list (or tuple) of outputs, or None; None items are skipped.

    Example::

        >>> FlatMapOp("split", str.split, None).process(Batch(["a b", "c"])).values
        ['a', 'b', 'c']
    """

    cdef int apply(self, object value, Py_ssize_t i, Output out) except -1:
        r = self.fn(value)
        if r is not None:
            out.emit_all(r, i, self.name)
        return 0


cdef class DecodeOp(MapOp):
    """Decode raw payloads with ``fn`` (None drops); a decoder that raises is bad input
    (counted, skipped), not a failure of the run.

    Example::

        >>> DecodeOp("text", bytes.decode, None).process(Batch([b"hi"])).values
        ['hi']
    """

    key_mode = DROP_KEYS

    def __init__(self, str name, fn, errors):
        MapOp.__init__(self, name, fn, errors)
        self.bad_input_kind = "decoder"


cdef class KeyByOp(Op):
    """Give each message the key ``fn(value)`` and its key group.

    A key extractor that raises, or returns something that is not a str, bytes or int, is bad
    input: the message is counted and skipped.

    Example::

        >>> b = KeyByOp("first", lambda w: w[0], None, 16).process(Batch(["ab", "cd"]))
        >>> b.keys, all(0 <= g < 16 for g in b.groups)
        (['a', 'c'], True)
    """

    key_mode = NEW_KEYS
    cdef Py_ssize_t key_groups

    def __init__(self, str name, fn, errors, Py_ssize_t key_groups):
        Op.__init__(self, name, fn, errors)
        self.key_groups = key_groups
        self.bad_input_kind = "key_extractor"

    cdef int apply(self, object value, Py_ssize_t i, Output out) except -1:
        k = normalize_key(self.fn(value))
        out.emit_keyed(value, k, key_group(k, self.key_groups), i)
        return 0


cdef class ConstantKeyOp(Op):
    """Give every message one key (``collect``, or a source's own key).

    Example::

        >>> ConstantKeyOp("collect", None, "all", 16).process(Batch([1, 2], keys=["a", "b"])).key
        'all'
    """

    cdef object key
    cdef Py_ssize_t group

    def __init__(self, str name, errors, key, Py_ssize_t key_groups):
        Op.__init__(self, name, None, errors)
        self.key = normalize_key(key)
        self.group = key_group(self.key, key_groups)

    cdef Batch run(self, Batch batch):
        cdef Batch b = Batch(batch.values, None, self.key, None, self.group, batch.ingest_ns,
                             batch.event_times, batch.origin, batch.watermark)
        self.processed += len(batch.values)
        return b


cdef class EventTimeOp(Op):
    """Give each message the event time ``fn(value)``: integer nanoseconds or a datetime (naive
    means UTC). Anything else, or an extractor that raises, is bad input. Each batch leaves with
    the source's watermark: the highest event time seen so far.

    Example::

        >>> import datetime
        >>> op = EventTimeOp("t", lambda v: v, None)
        >>> b = op.process(Batch([5, datetime.datetime(1970, 1, 1, 0, 0, 1), 3]))
        >>> b.event_times, b.watermark
        ([5, 1000000000, 3], 1000000000)
    """

    key_mode = NEW_TIMES
    cdef readonly int64_t high

    def __init__(self, str name, fn, errors):
        Op.__init__(self, name, fn, errors)
        self.bad_input_kind = "event_time"
        self.high = NO_WATERMARK

    cdef int apply(self, object value, Py_ssize_t i, Output out) except -1:
        cdef int64_t t = event_time_ns(self.fn(value))
        if t > self.high:
            self.high = t
        out.emit_timed(value, i, t)
        return 0

    cdef Batch run(self, Batch batch):
        cdef Batch b = Op.run(self, batch)
        if self.high > b.watermark:
            b.watermark = self.high
        return b


cdef int64_t event_time_ns(object t) except? -1:
    """An event extractor's result as nanoseconds, or a TypeError/ValueError saying why not."""
    if isinstance(t, datetime):
        if t.tzinfo is not None:
            t = t.replace(tzinfo=None) - t.utcoffset()
        delta = t - _EPOCH
        t = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    elif type(t) is not int:
        if isinstance(t, bool) or not isinstance(t, int):
            raise TypeError(f"event_time returned {type(t).__name__} {t!r:.60}; return integer "
                            f"nanoseconds since the epoch (see wallaroo.seconds) or a datetime")
    if not -EVENT_TIME_LIMIT < t < EVENT_TIME_LIMIT:
        raise ValueError(f"event time {t} ns is out of range (more than about 146 years from "
                         f"1970); event times are nanoseconds since the epoch")
    return <int64_t>t


cdef class StateOp(Op):
    """``fn(value, state)`` with one state object per key, made lazily by ``factory()``.

    With ``multi`` the function returns a list (or None) like a computation_multi. ``states`` is
    the live key → state mapping.

    Example::

        >>> def count(v, st):
        ...     st.append(v)
        ...     return len(st)
        >>> op = StateOp("count", count, None, list, False)
        >>> op.process(Batch(["a", "b", "c"], keys=["x", "y", "x"], groups=[0, 0, 0])).values
        [1, 1, 2]
    """

    cdef object factory
    cdef bint multi
    cdef readonly dict states

    def __init__(self, str name, fn, errors, factory, bint multi):
        Op.__init__(self, name, fn, errors)
        self.factory = factory
        self.multi = multi
        self.states = {}

    cdef int apply(self, object value, Py_ssize_t i, Output out) except -1:
        cdef Batch src = out.source
        key = src.key if src.keys is None else src.keys[i]
        state = self.states.get(key)
        if state is None:
            state = self.factory()
            self.states[key] = state
        r = self.fn(value, state)
        if r is not None:
            if self.multi:
                out.emit_all(r, i, self.name)
            else:
                out.emit(r, i)
        return 0


cdef class EncodeOp(Op):
    """Encode values for a sink: bytes as they are, str as UTF-8, None skipped.

    Any other result is an error of the encoder, reported like a computation's.

    Example::

        >>> EncodeOp("enc", lambda v: f"{v}\\n", None).process(Batch([1, 2])).values
        [b'1\\n', b'2\\n']
    """

    key_mode = DROP_KEYS

    cdef int apply(self, object value, Py_ssize_t i, Output out) except -1:
        r = self.fn(value)
        if type(r) is bytes:
            out.values.append(r)
        elif type(r) is str:
            out.values.append((<str>r).encode("utf-8"))
        elif r is None:
            pass
        elif isinstance(r, (bytes, bytearray, memoryview)):
            out.values.append(bytes(r))
        elif isinstance(r, str):
            out.values.append(str(r).encode("utf-8"))
        else:
            raise TypeError(f"encoder {self.name!r} returned {type(r).__name__} ({r!r:.60}); "
                            f"an encoder must return bytes, str or None")
        return 0


cdef class Chain:
    """Ops fused into one pass over a batch, then handed to every output (``push(batch)``).

    Example::

        >>> class Keep:
        ...     def __init__(self): self.got = []
        ...     def push(self, batch): self.got.extend(batch.values)
        >>> keep = Keep()
        >>> Chain([FlatMapOp("split", str.split, None)], [keep]).push(Batch(["a b"]))
        >>> keep.got
        ['a', 'b']
    """

    def __init__(self, list ops, list outputs=None):
        self.ops = ops
        self.outputs = outputs if outputs is not None else []
        self.watermark_outputs = []

    def add_output(self, output, bint wants_watermarks=False):
        """Send this chain's results to ``output`` too (a Chain or a sink with ``push``);
        ``wants_watermarks`` also sends it batches that carry only a watermark."""
        self.outputs.append(output)
        if wants_watermarks:
            self.watermark_outputs.append(output)

    @property
    def sees_watermarks(self):
        """Whether an op of this chain or anything after it uses watermarks."""
        return bool(self.watermark_outputs) or any((<Op>op).sees_watermarks for op in self.ops)

    cpdef push(self, Batch batch):
        """Run the batch through every op, then through every output."""
        self._run(batch, 0)

    def tick(self, now_ns):
        """Let the chain's first op act on the passing of time (a window firing on an idle
        input, or a count window's timeout), and send on what it emits."""
        batch = self.ops[0].tick(now_ns)
        if batch is not None:
            self._run(batch, 1)

    cdef _run(self, Batch batch, Py_ssize_t start):
        cdef Op op
        cdef Py_ssize_t i
        for i in range(start, len(self.ops)):
            op = self.ops[i]
            if batch.values or op.sees_watermarks:
                batch = op.run(batch)
        if batch.values:
            for out in self.outputs:
                out.push(batch)
        elif batch.watermark != NO_WATERMARK:
            for out in self.watermark_outputs:
                out.push(batch)
