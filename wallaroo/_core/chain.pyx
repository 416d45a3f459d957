# cython: language_level=3
"""The chain executor: fused stages run as one loop per stage over a batch.

A ``Batch`` is a list of values plus parallel metadata (per-message keys and key groups, or one
key for the whole batch, and the ingest time). An ``Op`` turns a batch into the next one; a
``Chain`` runs its ops in order and hands the result to its outputs (further chains or sinks).

The only per-message Python work is the user's own function call. A user function that raises
is reported to the ``errors`` object (see wallaroo.runtime.errors), which either raises to stop
the run (``user_error`` returns False: the rest of the batch is dropped, what came before it
flows on) or asks to skip the message, and the loop resumes at the next one.

Example::

    >>> from wallaroo._core.chain import Batch, Chain, MapOp
    >>> class Print:
    ...     def push(self, batch): print(batch.values)
    >>> Chain([MapOp("double", lambda x: x * 2, None)], [Print()]).push(Batch([1, 2], key="k"))
    [2, 4]
"""
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


cdef inline Batch _derive(Batch src, list values, list keys, list groups):
    """A batch with new values, keeping the source batch's constant metadata."""
    cdef Batch b = Batch.__new__(Batch)
    b.values = values
    b.keys = keys
    b.groups = groups
    b.key = src.key
    b.group = src.group
    b.ingest_ns = src.ingest_ns
    return b


cdef class Op:
    """One stage of a chain. ``errors`` receives failures (see module docstring).

    Example::

        >>> MapOp("inc", lambda x: x + 1, None).name
        'inc'
    """

    def __init__(self, str name, errors):
        self.name = name
        self.errors = errors
        self.processed = 0

    cdef Batch run(self, Batch batch):
        return batch

    def process(self, Batch batch):
        """Run this op alone over a batch (for tests and tools)."""
        return self.run(batch)


cdef class MapOp(Op):
    """``fn(value)``; a None result drops the message.

    Example::

        >>> MapOp("odd", lambda x: x if x % 2 else None, None).process(Batch([1, 2, 3])).values
        [1, 3]
    """

    cdef object fn

    def __init__(self, str name, fn, errors):
        Op.__init__(self, name, errors)
        self.fn = fn

    cdef Batch run(self, Batch batch):
        cdef list values = batch.values, keys = batch.keys, groups = batch.groups
        cdef list out = [], out_keys = None, out_groups = None
        cdef Py_ssize_t i = 0, n = len(values)
        cdef object r
        if keys is not None:
            out_keys = []
            out_groups = []
        while i < n:
            try:
                while i < n:
                    r = self.fn(values[i])
                    if r is not None:
                        out.append(r)
                        if keys is not None:
                            out_keys.append(keys[i])
                            out_groups.append(groups[i])
                    i += 1
            except Exception as exc:
                if not self.errors.user_error(self.name, values[i], exc):
                    break
                i += 1
        self.processed += n
        return _derive(batch, out, out_keys, out_groups)


cdef class FlatMapOp(Op):
    """``fn(value)`` returns a list (or tuple) of outputs, or None; None items are skipped.

    Example::

        >>> FlatMapOp("split", str.split, None).process(Batch(["a b", "c"])).values
        ['a', 'b', 'c']
    """

    cdef object fn

    def __init__(self, str name, fn, errors):
        Op.__init__(self, name, errors)
        self.fn = fn

    cdef Batch run(self, Batch batch):
        cdef list values = batch.values, keys = batch.keys, groups = batch.groups
        cdef list out = [], out_keys = None, out_groups = None
        cdef Py_ssize_t i = 0, n = len(values)
        cdef object r, item
        if keys is not None:
            out_keys = []
            out_groups = []
        while i < n:
            try:
                while i < n:
                    r = self.fn(values[i])
                    if r is not None:
                        if type(r) is not list and type(r) is not tuple:
                            raise TypeError(
                                f"{self.name} must return a list (or None), "
                                f"not {type(r).__name__}")
                        for item in r:
                            if item is not None:
                                out.append(item)
                                if keys is not None:
                                    out_keys.append(keys[i])
                                    out_groups.append(groups[i])
                    i += 1
            except Exception as exc:
                if not self.errors.user_error(self.name, values[i], exc):
                    break
                i += 1
        self.processed += n
        return _derive(batch, out, out_keys, out_groups)


cdef class DecodeOp(Op):
    """Decode raw payloads with ``fn``; a decoder that raises is bad input (counted, skipped).

    Example::

        >>> DecodeOp("text", bytes.decode, None).process(Batch([b"hi"])).values
        ['hi']
    """

    cdef object fn

    def __init__(self, str name, fn, errors):
        Op.__init__(self, name, errors)
        self.fn = fn

    cdef Batch run(self, Batch batch):
        cdef list values = batch.values
        cdef list out = []
        cdef Py_ssize_t i = 0, n = len(values)
        cdef object r
        while i < n:
            try:
                while i < n:
                    r = self.fn(values[i])
                    if r is not None:
                        out.append(r)
                    i += 1
            except Exception as exc:
                self.errors.bad_input(self.name, "decoder", values[i], exc)
                i += 1
        self.processed += n
        return _derive(batch, out, None, None)


cdef class KeyByOp(Op):
    """Give each message the key ``fn(value)`` and its key group.

    A key extractor that raises, or returns something that is not a str, bytes or int, is bad
    input: the message is counted and skipped.

    Example::

        >>> b = KeyByOp("first", lambda w: w[0], None, 16).process(Batch(["ab", "cd"]))
        >>> b.keys, all(0 <= g < 16 for g in b.groups)
        (['a', 'c'], True)
    """

    cdef object fn
    cdef Py_ssize_t key_groups

    def __init__(self, str name, fn, errors, Py_ssize_t key_groups):
        Op.__init__(self, name, errors)
        self.fn = fn
        self.key_groups = key_groups

    cdef Batch run(self, Batch batch):
        cdef list values = batch.values
        cdef list out = [], keys = [], groups = []
        cdef Py_ssize_t i = 0, n = len(values)
        cdef object k
        while i < n:
            try:
                while i < n:
                    k = normalize_key(self.fn(values[i]))
                    groups.append(key_group(k, self.key_groups))
                    keys.append(k)
                    out.append(values[i])
                    i += 1
            except Exception as exc:
                self.errors.bad_input(self.name, "key_extractor", values[i], exc)
                i += 1
        self.processed += n
        return _derive(batch, out, keys, groups)


cdef class ConstantKeyOp(Op):
    """Give every message one key (``collect``, or a source's own key).

    Example::

        >>> ConstantKeyOp("collect", None, "all", 16).process(Batch([1, 2], keys=["a", "b"])).key
        'all'
    """

    cdef object key
    cdef Py_ssize_t group

    def __init__(self, str name, errors, key, Py_ssize_t key_groups):
        Op.__init__(self, name, errors)
        self.key = normalize_key(key)
        self.group = key_group(self.key, key_groups)

    cdef Batch run(self, Batch batch):
        cdef Batch b = _derive(batch, batch.values, None, None)
        b.key = self.key
        b.group = self.group
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

    cdef object fn
    cdef object factory
    cdef bint multi
    cdef readonly dict states

    def __init__(self, str name, fn, errors, factory, bint multi):
        Op.__init__(self, name, errors)
        self.fn = fn
        self.factory = factory
        self.multi = multi
        self.states = {}

    cdef inline object _state(self, object key):
        st = self.states.get(key)
        if st is None:
            st = self.factory()
            self.states[key] = st
        return st

    cdef Batch run(self, Batch batch):
        cdef list values = batch.values, keys = batch.keys, groups = batch.groups
        cdef list out = [], out_keys = None, out_groups = None
        cdef Py_ssize_t i = 0, n = len(values)
        cdef object r, item, state = None
        if keys is not None:
            out_keys = []
            out_groups = []
        while i < n:
            try:
                if keys is None and state is None:
                    state = self._state(batch.key)
                while i < n:
                    if keys is not None:
                        state = self._state(keys[i])
                    r = self.fn(values[i], state)
                    if r is not None:
                        if not self.multi:
                            out.append(r)
                            if keys is not None:
                                out_keys.append(keys[i])
                                out_groups.append(groups[i])
                        else:
                            if type(r) is not list and type(r) is not tuple:
                                raise TypeError(
                                    f"{self.name} must return a list (or None), "
                                    f"not {type(r).__name__}")
                            for item in r:
                                if item is not None:
                                    out.append(item)
                                    if keys is not None:
                                        out_keys.append(keys[i])
                                        out_groups.append(groups[i])
                    i += 1
            except Exception as exc:
                if not self.errors.user_error(self.name, values[i], exc):
                    break
                i += 1
        self.processed += n
        return _derive(batch, out, out_keys, out_groups)


cdef class EncodeOp(Op):
    """Encode values for a sink: bytes as they are, str as UTF-8, None skipped.

    Any other result is an error of the encoder, reported like a computation's.

    Example::

        >>> EncodeOp("enc", lambda v: f"{v}\\n", None).process(Batch([1, 2])).values
        [b'1\\n', b'2\\n']
    """

    cdef object fn

    def __init__(self, str name, fn, errors):
        Op.__init__(self, name, errors)
        self.fn = fn

    cdef Batch run(self, Batch batch):
        cdef list values = batch.values
        cdef list out = []
        cdef Py_ssize_t i = 0, n = len(values)
        cdef object r
        while i < n:
            try:
                while i < n:
                    r = self.fn(values[i])
                    if type(r) is bytes:
                        out.append(r)
                    elif type(r) is str:
                        out.append((<str>r).encode("utf-8"))
                    elif r is None:
                        pass
                    elif isinstance(r, (bytes, bytearray, memoryview)):
                        out.append(bytes(r))
                    elif isinstance(r, str):
                        out.append(str(r).encode("utf-8"))
                    else:
                        raise TypeError(
                            f"encoder {self.name!r} returned {type(r).__name__} "
                            f"({r!r:.60}); an encoder must return bytes, str or None")
                    i += 1
            except Exception as exc:
                if not self.errors.user_error(self.name, values[i], exc):
                    break
                i += 1
        self.processed += n
        return _derive(batch, out, None, None)


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
