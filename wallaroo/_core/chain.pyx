# cython: language_level=3
"""The chain executor: fused stages run as one loop per stage over a batch.

A ``Batch`` is a list of values plus parallel metadata (per-message keys and key groups, or one
key for the whole batch, and the ingest time). An ``Op`` turns a batch into the next one; a
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
from wallaroo._core.hashing cimport normalize_key, key_group


cdef class Batch:
    """Values plus metadata. ``keys``/``groups`` are per-message lists, or None when every
    message has ``key``/``group``.

    Example::

        >>> b = Batch(["a", "b"], key="src")
        >>> len(b), b.key_of(1)
        (2, 'src')
    """

    def __init__(self, list values, list keys=None, object key=None, list groups=None,
                 Py_ssize_t group=0, int64_t ingest_ns=0):
        self.values = values
        self.keys = keys
        self.key = key
        self.groups = groups
        self.group = group
        self.ingest_ns = ingest_ns

    def __len__(self):
        return len(self.values)

    def key_of(self, Py_ssize_t i):
        """The key of message ``i``."""
        return self.key if self.keys is None else self.keys[i]

    def __repr__(self):
        return f"<Batch of {len(self.values)}>"


# What an op's output does with per-message keys: drop them (decoded or encoded values have
# none yet or need none), keep the input's, or set new ones (key_by).
cdef enum:
    DROP_KEYS = 0
    KEEP_KEYS = 1
    NEW_KEYS = 2


@cython.final
cdef class Output:
    """The batch an op is building: values, and the keys/groups that go with them.

    ``emit(value, i)`` adds an output of input message ``i``, carrying that message's key.
    """

    def __cinit__(self, Batch source, int key_mode):
        self.source = source
        self.values = []
        if key_mode == NEW_KEYS or (key_mode == KEEP_KEYS and source.keys is not None):
            self.keys = []
            self.groups = []

    cdef inline int emit(self, object value, Py_ssize_t i) except -1:
        self.values.append(value)
        if self.keys is not None:
            self.keys.append(self.source.keys[i])
            self.groups.append(self.source.groups[i])
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
        g = key_group(k, self.key_groups)
        out.values.append(value)
        out.keys.append(k)
        out.groups.append(g)
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
        cdef Batch b = Batch(batch.values, None, self.key, None, self.group, batch.ingest_ns)
        self.processed += len(batch.values)
        return b


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

    def add_output(self, output):
        """Send this chain's results to ``output`` too (a Chain or a sink with ``push``)."""
        self.outputs.append(output)

    cpdef push(self, Batch batch):
        """Run the batch through every op, then through every output."""
        cdef Op op
        for op in self.ops:
            batch = op.run(batch)
            if not batch.values:
                return
        for out in self.outputs:
            out.push(batch)
