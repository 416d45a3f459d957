# cython: language_level=3
"""The chain executor: fused stages run as one loop over a batch, message by message.

A ``Batch`` is a list of values plus parallel metadata: per-message keys and key groups (or one
key for the whole batch), per-message event times (or the ingest time for all), the input it
came from (``origin``) and, in band, that input's watermark. A ``Chain`` holds fused ``Op``s and
hands what comes out of them to its outputs (further chains or sinks).

The ops of a chain are linked: each ``push(value, key, group, t)`` does its stage's work on one
message and pushes each result straight into the next op, the last op into the chain's
``Collector``, which builds the output batch. So one loop over the batch (``Op.consume`` of the
first op) carries every message through every stage, with no batch in between; the only
per-message Python work is the user's own function call. A user function that raises is
reported to the ``errors`` object (see wallaroo.runtime.errors): bad input is counted and
skipped; a user error is skipped, or stops the run (``user_error`` returns False: the rest of
the batch is dropped, what came before it flows on).

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
from cpython.ref cimport PyObject, Py_XDECREF
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from wallaroo._core.histogram cimport Histogram
from wallaroo._core.hashing cimport normalize_key, key_group

import time

cdef extern from "Python.h":
    # The user's function is called through these, not inside a ``try``: a NULL result means it
    # raised, and ``Op.caught`` takes the exception. The normal path pays nothing for errors.
    PyObject *PyObject_CallOneArg(object fn, object arg)
    PyObject *PyObject_Vectorcall(object fn, PyObject **args, size_t nargs, PyObject *kwnames)
    long long PyLong_AsLongLongAndOverflow(object number, int *overflow)
    void PyErr_Fetch(PyObject **kind, PyObject **value, PyObject **traceback)
    void PyErr_NormalizeException(PyObject **kind, PyObject **value, PyObject **traceback)
    int PyException_SetTraceback(PyObject *exc, PyObject *traceback)

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

#: By default one message in this many has its stage's work timed (see ``set_latency_sampling``).
DEFAULT_LATENCY_SAMPLING = 32
cdef unsigned int _sample_every = DEFAULT_LATENCY_SAMPLING
cdef unsigned int NEVER = 0xFFFFFFFF


def set_latency_sampling(unsigned int every):
    """Time one message in ``every`` at each stage from now on (0: time none). Ops made
    after the call follow it; each op times its first message. Reading the clock costs about as
    much as a small Python call, so timing every message would slow a chain of cheap stages
    by a fifth; one in 32 still gives thousands of samples a second.

    Example::

        >>> set_latency_sampling(1)
        >>> op = MapOp("inc", lambda x: x + 1, None)
        >>> op.process(Batch([1, 2, 3])).values, op.latency.count
        ([2, 3, 4], 3)
        >>> set_latency_sampling(DEFAULT_LATENCY_SAMPLING)
    """
    global _sample_every
    _sample_every = every


def latency_sampling():
    """One message in how many is timed at each stage (0: none).

    Example::

        >>> latency_sampling() == DEFAULT_LATENCY_SAMPLING
        True
    """
    return _sample_every


cdef inline int64_t monotonic_ns() noexcept nogil:
    """The monotonic clock in nanoseconds (vDSO: no system call)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1_000_000_000 + ts.tv_nsec


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
        self._check_index(i)
        return self.key if self.keys is None else self.keys[i]

    def event_time_of(self, Py_ssize_t i):
        """The event time of message ``i`` (nanoseconds)."""
        self._check_index(i)
        return self.ingest_ns if self.event_times is None else self.event_times[i]

    def _check_index(self, Py_ssize_t i):
        if not 0 <= i < len(self.values):  # the module is compiled without bounds checks
            raise IndexError(f"message {i} is not in this batch of {len(self.values)}")

    def __repr__(self):
        return f"<Batch of {len(self.values)}>"


class StopBatch(BaseException):
    """Raised through the ops when a failure stops the run: the rest of the batch is dropped.
    (A BaseException, so that no ``except Exception`` on the way can take it for a user
    error.)"""


cdef class Op:
    """One stage of a chain. ``errors`` receives failures (see module docstring).

    ``bad_input_kind`` is None for stages running user logic (their failures follow the error
    policy) and names the kind for stages whose failures mean bad input (decoder, key extractor,
    event-time extractor). ``process(batch)`` and ``tick(now)`` run an op alone (for tests and
    tools); in a running dataflow its chain drives it.

    Example::

        >>> MapOp("inc", lambda x: x + 1, None).name
        'inc'
    """

    def __init__(self, str name, fn, errors):
        self.name = name
        self.fn = fn
        self.errors = errors
        self.processed = 0
        self.latency = Histogram()
        self.countdown = 0 if _sample_every else NEVER
        self.bad_input_kind = None
        self.sees_watermarks = False
        self.keys_effect = KEEP
        self.times_effect = KEEP

    cdef int push(self, object value, object key, object group, int64_t t) except -1:
        """Do this stage's work on one message and push the results on."""
        self.processed += 1
        return self.next.push(value, key, group, t)

    cdef int consume(self, Batch batch) except -1:
        """The loop over a batch: every message into ``push``."""
        cdef list values = batch.values, keys = batch.keys, groups = batch.groups
        cdef list times = batch.event_times
        cdef object key = batch.key, group = batch.group
        cdef int64_t t = batch.ingest_ns
        cdef Py_ssize_t i, n = len(values)
        try:
            for i in range(n):
                if keys is not None:
                    key = keys[i]
                    group = groups[i]
                if times is not None:
                    t = times[i]
                self.push(values[i], key, group, t)
        except StopBatch:
            pass
        return 0

    cdef bint time_passes(self, int64_t now) except -1:
        """React to the passing of time (windows); True when the op's watermark moved."""
        return False

    cdef int finish_batch(self, Batch out) except -1:
        """Adjust the chain's output batch once the whole input batch is through."""
        return 0

    cdef int caught(self, object value) except -1:
        """The user's function raised (its call returned NULL): take the exception and report
        it with ``failed``; anything that is not an Exception (a StopBatch, Ctrl-C) goes on."""
        cdef PyObject *kind
        cdef PyObject *error
        cdef PyObject *traceback
        PyErr_Fetch(&kind, &error, &traceback)
        PyErr_NormalizeException(&kind, &error, &traceback)
        if traceback != NULL:
            PyException_SetTraceback(error, traceback)
        exc = <object>error
        Py_XDECREF(kind)
        Py_XDECREF(error)
        Py_XDECREF(traceback)
        if not isinstance(exc, Exception) and not isinstance(exc, StopBatch):
            raise exc  # Ctrl-C, SystemExit: not the stage's failure (a StopBatch from user code is)
        return self.failed(value, exc)

    cdef bint sampled(self):
        """Whether this message's work is timed (one in ``latency_sampling()``)."""
        if self.countdown:
            self.countdown -= 1
            return False
        self.countdown = _sample_every - 1 if _sample_every else NEVER
        return True

    cdef int timed(self, int64_t started) except -1:
        """Record the time since ``started`` (``monotonic_ns``) as one sample of ``latency``."""
        self.latency.record_many(monotonic_ns() - started, 1)
        return 0

    cdef int failed(self, object value, object exc) except -1:
        """Report that this stage failed on ``value``: skip it, or stop (StopBatch)."""
        if self.bad_input_kind is not None:
            self.errors.bad_input(self.name, self.bad_input_kind, value, exc)
        elif not self.errors.user_error(self.name, value, exc):
            raise StopBatch()
        return 0

    def _solo_chain(self):
        if self.solo is None:
            self.solo = Chain([self])  # refuses an op that is already in a chain
        return self.solo

    def process(self, Batch batch):
        """Run this op alone over a batch; the batch it makes."""
        return self._solo_chain().run(batch)

    def tick(self, now_ns=None):
        """Let this op (alone) act on the passing of time; the batch it makes, or None."""
        return self._solo_chain().tick(now_ns)


#: What ``call_user`` returns when the user's function raised and the message is skipped.
cdef object SKIPPED = object()


cdef inline object call_user(Op op, object value):
    """``op.fn(value)``, called through the C API rather than inside a ``try``: a NULL result
    means it raised, and ``Op.caught`` reports it (SKIPPED: go on with the next message). A
    sampled call is timed into ``op.latency``."""
    cdef PyObject *r
    cdef int64_t started
    if op.countdown:   # not sampled: the common case, inline
        op.countdown -= 1
        r = PyObject_CallOneArg(op.fn, value)
    elif op.sampled():
        started = monotonic_ns()
        r = PyObject_CallOneArg(op.fn, value)
        op.timed(started)
    if r == NULL:
        op.caught(value)
        return SKIPPED
    result = <object>r
    Py_XDECREF(r)
    return result


cdef class MapOp(Op):
    """``fn(value)``; a None result drops the message.

    Example::

        >>> MapOp("odd", lambda x: x if x % 2 else None, None).process(Batch([1, 2, 3])).values
        [1, 3]
    """

    cdef int push(self, object value, object key, object group, int64_t t) except -1:
        self.processed += 1
        result = call_user(self, value)
        if result is SKIPPED:
            return 0
        if result is not None:
            self.next.push(result, key, group, t)
        return 0


cdef class FlatMapOp(Op):
    """``fn(value)`` returns a list (or tuple) of outputs, or None; None items are skipped.

    Example::

        >>> FlatMapOp("split", str.split, None).process(Batch(["a b", "c"])).values
        ['a', 'b', 'c']
    """

    cdef int push(self, object value, object key, object group, int64_t t) except -1:
        self.processed += 1
        results = call_user(self, value)
        if results is SKIPPED:
            return 0
        return push_each(self, value, results, key, group, t)


cdef class DecodeOp(MapOp):
    """Decode raw payloads with ``fn`` (None drops); a decoder that raises is bad input
    (counted, skipped), not a failure of the run.

    Example::

        >>> DecodeOp("text", bytes.decode, None).process(Batch([b"hi"])).values
        ['hi']
    """

    def __init__(self, str name, fn, errors):
        MapOp.__init__(self, name, fn, errors)
        self.bad_input_kind = "decoder"
        self.keys_effect = DROP


cdef class KeyByOp(Op):
    """Give each message the key ``fn(value)`` and its key group.

    A key extractor that raises, or returns something that is not a str, bytes or int, is bad
    input: the message is counted and skipped.

    Example::

        >>> b = KeyByOp("first", lambda w: w[0], None, 16).process(Batch(["ab", "cd"]))
        >>> b.keys, all(0 <= g < 16 for g in b.groups)
        (['a', 'c'], True)
    """

    cdef Py_ssize_t key_groups

    def __init__(self, str name, fn, errors, Py_ssize_t key_groups):
        Op.__init__(self, name, fn, errors)
        self.key_groups = key_groups
        self.bad_input_kind = "key_extractor"
        self.keys_effect = NEW

    cdef int push(self, object value, object key, object group, int64_t t) except -1:
        self.processed += 1
        k = call_user(self, value)
        if k is SKIPPED:
            return 0
        try:  # a key of the wrong type, or a str that is not valid Unicode, is bad input
            if type(k) is not str:
                k = normalize_key(k)
            group_of_key = key_group(k, self.key_groups)
        except Exception as exc:
            return self.failed(value, exc)
        return self.next.push(value, k, group_of_key, t)


cdef class ConstantKeyOp(Op):
    """Give every message one key (``collect``, or a source's own key).

    Example::

        >>> b = Batch([1, 2], keys=["a", "b"], groups=[3, 4])
        >>> ConstantKeyOp("collect", None, "all", 16).process(b).key
        'all'
    """

    cdef readonly object key
    cdef readonly Py_ssize_t group
    cdef object boxed_group

    def __init__(self, str name, errors, key, Py_ssize_t key_groups):
        Op.__init__(self, name, None, errors)
        self.key = normalize_key(key)
        self.group = key_group(self.key, key_groups)
        self.boxed_group = self.group
        self.keys_effect = CONSTANT

    cdef int push(self, object value, object key, object group, int64_t t) except -1:
        self.processed += 1
        return self.next.push(value, self.key, self.boxed_group, t)


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

    cdef readonly int64_t high

    def __init__(self, str name, fn, errors):
        Op.__init__(self, name, fn, errors)
        self.bad_input_kind = "event_time"
        self.times_effect = NEW
        self.high = NO_WATERMARK

    cdef int push(self, object value, object key, object group, int64_t t) except -1:
        self.processed += 1
        cdef int overflow = 1
        result = call_user(self, value)
        if result is SKIPPED:
            return 0
        if type(result) is int:
            t = PyLong_AsLongLongAndOverflow(result, &overflow)
        if overflow or not -EVENT_TIME_LIMIT < t < EVENT_TIME_LIMIT:
            try:  # a datetime, or something wrong
                t = event_time_ns(result)
            except Exception as exc:
                return self.failed(value, exc)
        if t > self.high:
            self.high = t
        return self.next.push(value, key, group, t)

    cdef int finish_batch(self, Batch out) except -1:
        if self.high > out.watermark:
            out.watermark = self.high
        return 0


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

    def load_states(self, dict states):
        """Adopt restored states, ``{key: state}`` (a checkpoint's): taken as they are when
        this op has none yet.

        Example::

            >>> op = StateOp("count", None, None, list, False)
            >>> op.load_states({"a": [1]}); op.states
            {'a': [1]}
        """
        if self.states:
            self.states.update(states)
        else:
            self.states = states

    cdef int push(self, object value, object key, object group, int64_t t) except -1:
        cdef PyObject *args[2]
        self.processed += 1
        state = self.states.get(key)
        if state is None:
            try:
                state = self.factory()
            except Exception as exc:
                return self.failed(value, exc)
            self.states[key] = state
        args[0] = <PyObject *>value
        args[1] = <PyObject *>state
        cdef PyObject *r
        cdef int64_t started
        if self.sampled():
            started = monotonic_ns()
            r = PyObject_Vectorcall(self.fn, args, 2, NULL)
            self.timed(started)
        else:
            r = PyObject_Vectorcall(self.fn, args, 2, NULL)
        if r == NULL:
            return self.caught(value)
        result = <object>r
        Py_XDECREF(r)
        if self.multi:
            return push_each(self, value, result, key, group, t)
        if result is not None:
            return self.next.push(result, key, group, t)
        return 0


cdef class EncodeOp(Op):
    """Encode values for a sink: bytes as they are, str as UTF-8, None skipped.

    Any other result is an error of the encoder, reported like a computation's.

    Example::

        >>> EncodeOp("enc", lambda v: f"{v}\\n", None).process(Batch([1, 2])).values
        [b'1\\n', b'2\\n']
    """

    def __init__(self, str name, fn, errors):
        Op.__init__(self, name, fn, errors)
        self.keys_effect = DROP
        self.times_effect = DROP

    cdef int push(self, object value, object key, object group, int64_t t) except -1:
        self.processed += 1
        result = call_user(self, value)
        if result is SKIPPED:
            return 0
        if result is None:
            return 0
        if type(result) is not bytes:
            try:  # a str that is not valid Unicode, or not bytes or str at all: the encoder's error
                result = self.to_bytes(result)
            except Exception as exc:
                return self.failed(value, exc)
        return self.next.push(result, key, group, t)

    cdef bytes to_bytes(self, object result):
        if type(result) is str:
            return (<str>result).encode("utf-8")
        if isinstance(result, (bytes, bytearray, memoryview)):
            return bytes(result)
        if isinstance(result, str):
            return str(result).encode("utf-8")
        raise TypeError(f"encoder {self.name!r} returned {type(result).__name__} "
                        f"({result!r:.60}); an encoder must return bytes, str or None")


cdef int push_each(Op op, object value, object results, object key, object group,
                   int64_t t) except -1:
    """The *_multi contract: push each non-None item of a list or tuple; None pushes nothing;
    anything else is the stage's error."""
    if results is None:
        return 0
    if type(results) is not list and type(results) is not tuple:
        return op.failed(value, TypeError(
            f"{op.name} must return a list (or None), not {type(results).__name__}"))
    for item in results:
        if item is not None:
            op.next.push(item, key, group, t)
    return 0


@cython.final
cdef class Collector(Op):
    """The end of a chain: gathers what the last op pushes into the chain's output batch."""

    def __init__(self):
        Op.__init__(self, "collector", None, None)

    cdef begin(self, bint track_keys, bint track_times):
        self.values = []
        self.track_keys = track_keys
        self.track_times = track_times
        if track_keys:
            self.keys = []
            self.groups = []
        if track_times:
            self.times = []

    cdef int push(self, object value, object key, object group, int64_t t) except -1:
        self.values.append(value)
        if self.track_keys:
            self.keys.append(key)
            self.groups.append(group)
        if self.track_times:
            self.times.append(t)
        return 0


cdef class Chain:
    """Ops fused into one pass over a batch, then handed to every output (``push(batch)``).

    Example::

        >>> class Keep:
        ...     def __init__(self): self.got = []
        ...     def push(self, batch): self.got.extend(batch.values)
        >>> keep = Keep()
        >>> Chain([FlatMapOp("split", str.split, None), MapOp("up", str.upper, None)],
        ...       [keep]).push(Batch(["a b"]))
        >>> keep.got
        ['A', 'B']
    """

    def __init__(self, list ops, list outputs=None):
        cdef Op op
        cdef Py_ssize_t i
        self.ops = ops
        self.outputs = outputs if outputs is not None else []
        self.watermark_outputs = []
        self.collector = Collector()
        self.head = ops[0] if ops else None
        self.keys_effect = KEEP
        self.times_effect = KEEP
        for i in range(len(ops)):
            op = ops[i]
            if op.next is not None:
                raise ValueError(f"op {op.name!r} is already part of a chain; an op runs in one")
            if i > 0 and op.sees_watermarks:
                raise ValueError(f"op {op.name!r} must come first in its chain (it reads whole "
                                 f"batches and their watermarks)")
        for i in range(len(ops)):
            op = ops[i]
            op.next = ops[i + 1] if i + 1 < len(ops) else self.collector
            if op.keys_effect != KEEP:
                self.keys_effect = op.keys_effect
                if op.keys_effect == CONSTANT:
                    self.constant_key = (<ConstantKeyOp>op).key
                    self.constant_group = (<ConstantKeyOp>op).group
            if op.times_effect != KEEP:
                self.times_effect = op.times_effect

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

    cpdef Batch run(self, Batch batch):
        """Carry the batch through every op; the batch that comes out."""
        if self.head is None:
            return batch
        self.collector.begin(
            self.keys_effect == NEW or (self.keys_effect == KEEP and batch.keys is not None),
            self.times_effect == NEW or (self.times_effect == KEEP and batch.event_times is not None))
        if batch.values or self.head.sees_watermarks:
            self.head.consume(batch)
        return self.finish(batch)

    cdef Batch finish(self, Batch source):
        cdef Collector c = self.collector
        cdef Batch b = Batch.__new__(Batch)
        cdef Op op
        b.values = c.values
        b.keys = c.keys if c.track_keys else None
        b.groups = c.groups if c.track_keys else None
        b.event_times = c.times if c.track_times else None
        if self.keys_effect == CONSTANT:
            b.key = self.constant_key
            b.group = self.constant_group
        elif self.keys_effect == NEW:
            b.key = None
            b.group = 0
        else:
            b.key = source.key
            b.group = source.group
        b.ingest_ns = source.ingest_ns
        b.origin = source.origin
        b.watermark = source.watermark
        c.values = c.keys = c.groups = c.times = None
        for op in self.ops:
            op.finish_batch(b)
        return b

    cpdef push(self, Batch batch):
        """Run the batch through every op, then through every output."""
        self.forward(self.run(batch))

    cdef forward(self, Batch out):
        if out.values:
            for target in self.outputs:
                target.push(out)
        elif out.watermark != NO_WATERMARK:
            for target in self.watermark_outputs:
                target.push(out)

    def tick(self, now_ns=None):
        """Let the chain's first op act on the passing of time (a window firing on an idle
        input, or a count window's timeout) and send on what it emits; that batch, or None."""
        cdef int64_t now = time.monotonic_ns() if now_ns is None else now_ns
        cdef Batch source = Batch([], ingest_ns=time.time_ns())
        if self.head is None:
            return None
        self.collector.begin(self.keys_effect == NEW, self.times_effect == NEW)
        moved = self.head.time_passes(now)
        out = self.finish(source)
        if not out.values and not moved:
            return None
        self.forward(out)
        return out
