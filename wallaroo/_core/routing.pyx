# cython: language_level=3
"""Routing by key group: the exchange step that splits a batch among the workers owning its
messages' key groups.

A ``RoutingTable`` maps every key group (0..G-1) to a destination (0..D-1, the index of a
downstream worker); ``RoutingTable.even`` is the default table. ``route(batch, table)`` returns
a list of D entries: for each destination, a ``Batch`` holding the messages whose key group it
owns, in their original order, or None when nothing goes there.

Watermarks must reach every downstream worker, whichever messages it owns: a batch that carries
a watermark gives each destination at least a batch with that watermark (an empty one when none
of the messages is for it), so a worker that owns none of an input's recent keys still sees the
input's time advance. A destination gets None only when it gets neither a message nor a
watermark.

Routed batches may share objects with the batch routed (the batch itself, its values, keys and
event times): treat a batch as read-only once routed.

Example::

    >>> from wallaroo._core.chain import Batch
    >>> from wallaroo._core.routing import RoutingTable, route
    >>> table = RoutingTable.even(4, 2)       # key groups 0, 1 -> destination 0; 2, 3 -> 1
    >>> to = route(Batch(["a", "b", "c"], keys=["x", "y", "z"], groups=[3, 0, 2]), table)
    >>> to[0].values, to[1].values, to[1].keys
    (['b'], ['a', 'c'], ['x', 'z'])
"""
from cpython.list cimport PyList_New
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.object cimport PyObject
from cpython.exc cimport PyErr_Occurred, PyErr_Clear
from cpython.number cimport PyNumber_Index
from wallaroo._core.chain cimport Batch, NO_WATERMARK

# Raw access to lists and ints: the loops below run no Python code, so they work on borrowed
# pointers and do their own reference counting.
cdef extern from *:
    """
    #include <Python.h>
    /* The value of an int object; -1 with an exception set when it overflows. */
    static inline Py_ssize_t wallaroo_routing_int(PyObject* o) {
    #if PY_VERSION_HEX >= 0x030C0000
        if (PyUnstable_Long_IsCompact((PyLongObject*)o))
            return (Py_ssize_t)PyUnstable_Long_CompactValue((PyLongObject*)o);
    #elif !defined(PYPY_VERSION)
        Py_ssize_t size = Py_SIZE(o);
        if (size == 0) return 0;
        if (size == 1) return (Py_ssize_t)((PyLongObject*)o)->ob_digit[0];
    #endif
        return PyLong_AsSsize_t(o);
    }
    """
    ctypedef struct PyListObject:
        PyObject** ob_item
    PyObject* _list_get "PyList_GET_ITEM"(PyObject* lst, Py_ssize_t i)
    void _incref "Py_INCREF"(PyObject* o)
    bint _is_int "PyLong_Check"(PyObject* o)
    Py_ssize_t _int_value "wallaroo_routing_int"(PyObject* o)
    const Py_ssize_t PY_SSIZE_T_MAX


# Batches up to this many messages, and tables up to this many destinations, route without
# allocating scratch memory.
cdef enum:
    STACK_MESSAGES = 1024
    STACK_DESTINATIONS = 64


cdef class RoutingTable:
    """Which destination owns each key group: ``owners[g]`` is the destination (0..D-1) of key
    group ``g`` (0..G-1), kept as a C array.

    ``destinations`` (D) defaults to one more than the highest destination in ``owners``; give it
    to allow destinations that own no group. An entry that is not an integer raises TypeError,
    one outside 0..D-1 ValueError, both naming the key group; an empty ``owners`` raises
    ValueError too. Tables pickle, and compare equal when they agree on every group.

    Example::

        >>> t = RoutingTable([0, 1, 1, 0])
        >>> len(t), t.destinations, t.owner(2), t.groups_of(0)
        (4, 2, 1, [0, 3])
        >>> RoutingTable([0, 2], destinations=2)
        Traceback (most recent call last):
        ...
        ValueError: key group 1 has destination 2, outside 0..1
    """

    cdef Py_ssize_t* owners
    cdef readonly Py_ssize_t groups
    cdef readonly Py_ssize_t destinations

    def __cinit__(self):
        self.owners = NULL
        self.groups = 0
        self.destinations = 0

    def __init__(self, owners, destinations=None):
        cdef list entries = list(owners)
        cdef Py_ssize_t g, n = len(entries), top = -1, limit = PY_SSIZE_T_MAX
        if n == 0:
            raise ValueError("a routing table needs at least one key group")
        if destinations is not None:
            limit = destinations
            if limit <= 0:
                raise ValueError(f"the number of destinations must be positive, not {limit}")
        cdef Py_ssize_t* table = <Py_ssize_t*>PyMem_Malloc(n * sizeof(Py_ssize_t))
        if table == NULL:
            raise MemoryError()
        try:
            for g in range(n):
                entry = entries[g]
                try:
                    d = PyNumber_Index(entry)
                except TypeError:
                    raise TypeError(f"key group {g} has destination {entry!r:.60}; destinations "
                                    f"are integers") from None
                if d < 0 or d >= limit:
                    bound = f"0..{limit - 1}" if destinations is not None else "0 or more"
                    raise ValueError(f"key group {g} has destination {d}, outside {bound}")
                table[g] = d
                if d > top:
                    top = d
        except BaseException:
            PyMem_Free(table)
            raise
        PyMem_Free(self.owners)
        self.owners = table
        self.groups = n
        self.destinations = limit if destinations is not None else top + 1

    def __dealloc__(self):
        PyMem_Free(self.owners)

    @staticmethod
    def even(Py_ssize_t groups, Py_ssize_t destinations):
        """The default table: the key groups in contiguous ranges, as even as possible.

        Destination ``d`` owns a run of consecutive groups, after those of ``d - 1``; the runs
        differ in length by at most one, the longer ones first (``groups % destinations`` of them
        hold ``groups // destinations + 1``). With more destinations than groups, each of the
        first ``groups`` destinations owns one group and the rest own none.

        Contiguous runs shift when ``destinations`` changes: going from ``even(G, 2)`` to
        ``even(G, 4)`` moves three quarters of the groups, where half would do. A rescale should
        build its new table from the old one (see ``moved``) rather than call ``even`` again.

        Example::

            >>> t = RoutingTable.even(10, 3)
            >>> [t.groups_of(d) for d in range(3)]
            [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
        """
        if groups <= 0:
            raise ValueError(f"the number of key groups must be positive, not {groups}")
        if destinations <= 0:
            raise ValueError(f"the number of destinations must be positive, not {destinations}")
        cdef RoutingTable t = RoutingTable.__new__(RoutingTable)
        t.owners = <Py_ssize_t*>PyMem_Malloc(groups * sizeof(Py_ssize_t))
        if t.owners == NULL:
            raise MemoryError()
        t.groups = groups
        t.destinations = destinations
        cdef Py_ssize_t size = groups // destinations, extra = groups % destinations
        cdef Py_ssize_t d, g = 0, end
        for d in range(destinations):
            end = g + size + (1 if d < extra else 0)
            while g < end:
                t.owners[g] = d
                g += 1
        return t

    cpdef Py_ssize_t owner(self, Py_ssize_t group) except -1:
        """The destination that owns key group ``group``.

        Example::

            >>> RoutingTable([1, 0]).owner(0)
            1
        """
        if group < 0 or group >= self.groups:
            raise ValueError(f"key group {group} is outside 0..{self.groups - 1}")
        return self.owners[group]

    def groups_of(self, Py_ssize_t destination):
        """The key groups ``destination`` owns, in increasing order.

        Example::

            >>> RoutingTable([0, 1, 0]).groups_of(0)
            [0, 2]
        """
        if destination < 0 or destination >= self.destinations:
            raise ValueError(f"destination {destination} is outside 0..{self.destinations - 1}")
        cdef Py_ssize_t g
        return [g for g in range(self.groups) if self.owners[g] == destination]

    def moved(self, RoutingTable new_table not None):
        """The key groups whose owner differs in ``new_table`` (what a rescale must move), in
        increasing order. Both tables must have the same number of key groups.

        Example::

            >>> RoutingTable.even(6, 2).moved(RoutingTable.even(6, 3))
            [2, 4, 5]
        """
        if new_table.groups != self.groups:
            raise ValueError(f"tables differ in key groups ({self.groups} and "
                             f"{new_table.groups}); rescaling never changes their number")
        cdef Py_ssize_t g
        return [g for g in range(self.groups) if self.owners[g] != new_table.owners[g]]

    def as_list(self):
        """The owner of every key group, as a list (what the constructor takes).

        Example::

            >>> RoutingTable.even(3, 2).as_list()
            [0, 0, 1]
        """
        cdef Py_ssize_t g
        return [self.owners[g] for g in range(self.groups)]

    def __len__(self):
        return self.groups

    def __eq__(self, other):
        if not isinstance(other, RoutingTable):
            return NotImplemented
        cdef RoutingTable o = other
        return (o.groups == self.groups and o.destinations == self.destinations
                and not self.moved(o))

    __hash__ = None

    def __reduce__(self):
        return RoutingTable, (self.as_list(), self.destinations)

    def __repr__(self):
        return f"<RoutingTable of {self.groups} key groups to {self.destinations} destinations>"


cdef list _whole(Batch batch, Py_ssize_t d, Py_ssize_t D, bint has_watermark):
    """The batch goes whole to destination ``d``; with a watermark, the others get an empty
    batch carrying it (watermarks must reach every destination), else None."""
    cdef list result = [None] * D
    cdef Py_ssize_t c
    if has_watermark:
        empty = _like(batch, [], None, None, None)
        for c in range(D):
            result[c] = empty
    result[d] = batch
    return result


cdef Batch _like(Batch batch, list values, list keys, list groups, list event_times):
    """A batch of the given messages with ``batch``'s other fields."""
    cdef Batch b = Batch.__new__(Batch)
    b.values = values
    b.keys = keys
    b.groups = groups
    b.key = batch.key
    b.group = batch.group
    b.ingest_ns = batch.ingest_ns
    b.event_times = event_times
    b.origin = batch.origin
    b.watermark = batch.watermark
    return b


cpdef list route(Batch batch, RoutingTable table):
    """Split ``batch`` by key group: entry ``d`` of the result (one per destination) is a Batch
    of the messages whose key group ``table`` gives to ``d``, in their original order, with
    their keys, groups and event times; ``key``, ``group``, ``ingest_ns``, ``origin`` and
    ``watermark`` are copied. A destination that gets no message gets None, or, when ``batch``
    carries a watermark, an empty batch with that watermark (one object shared by all such
    destinations).

    A batch whose messages all go to one destination, including one with a single key for all
    (``keys`` None), goes there whole: the same object. A batch with no messages goes, the same
    object, to every destination when it carries a watermark (watermarks must reach all
    downstream workers), and nowhere when it does not.

    A per-message group that is not an int raises TypeError, one outside the table's key
    groups ValueError; lists of keys, groups or event times that do not match the values in
    length raise ValueError.

    Example::

        >>> from wallaroo._core.chain import Batch
        >>> table = RoutingTable([0, 1, 1])
        >>> to = route(Batch([10, 11, 12], keys=["a", "b", "c"], groups=[1, 0, 2],
        ...                  event_times=[5, 6, 7]), table)
        >>> (to[0].values, to[0].event_times), (to[1].values, to[1].groups)
        (([11], [6]), ([10, 12], [1, 2]))
        >>> whole = Batch([1, 2], key="k", group=2)
        >>> route(whole, table)[1] is whole, route(whole, table)[0]
        (True, None)
        >>> mark = Batch([], key="k", watermark=99)
        >>> all(b is mark for b in route(mark, table))
        True
    """
    if batch is None or table is None:
        raise TypeError("route() needs a Batch and a RoutingTable, not None")
    cdef Py_ssize_t D = table.destinations, G = table.groups
    cdef list values = batch.values, keys = batch.keys, groups = batch.groups
    cdef list times = batch.event_times
    cdef list result = [None] * D
    cdef Py_ssize_t n = len(values), i, d, g, c
    cdef bint has_watermark = batch.watermark != NO_WATERMARK
    cdef object empty = None
    cdef Py_ssize_t* owners = table.owners

    if n == 0:
        if has_watermark:
            for d in range(D):
                result[d] = batch
        return result
    if (keys is None) != (groups is None):
        raise ValueError("a batch has per-message keys and groups, or neither (one key for all)")
    if keys is None:
        g = batch.group
        if g < 0 or g >= G:
            raise ValueError(f"the batch's key group {g} is outside 0..{G - 1}")
        return _whole(batch, owners[g], D, has_watermark)
    if len(keys) != n or len(groups) != n or (times is not None and len(times) != n):
        raise ValueError(f"the batch has {n} values but {len(keys)} keys, {len(groups)} groups"
                         + ("" if times is None else f" and {len(times)} event times"))

    # Scratch: each message's destination; each destination's message count; and, per
    # destination, the next free slot in each of its four lists (values, keys, groups, times).
    cdef Py_ssize_t stack_dest[STACK_MESSAGES]
    cdef Py_ssize_t stack_count[STACK_DESTINATIONS]
    cdef PyObject** stack_slots[4 * STACK_DESTINATIONS]
    cdef Py_ssize_t* dest = stack_dest
    cdef Py_ssize_t* count = stack_count
    cdef PyObject*** slots = stack_slots
    cdef PyObject*** slot
    cdef PyObject* item
    cdef PyObject** src_values
    cdef PyObject** src_keys
    cdef PyObject** src_groups = (<PyListObject*>groups).ob_item
    cdef PyObject** src_times
    cdef Batch b
    try:
        if n > STACK_MESSAGES:
            dest = <Py_ssize_t*>PyMem_Malloc(n * sizeof(Py_ssize_t))
        if D > STACK_DESTINATIONS:
            count = <Py_ssize_t*>PyMem_Malloc(D * sizeof(Py_ssize_t))
            slots = <PyObject***>PyMem_Malloc(4 * D * sizeof(PyObject**))
        if dest == NULL or count == NULL or slots == NULL:
            raise MemoryError()
        for d in range(D):
            count[d] = 0

        # Pass 1: each message's destination (only C runs: the lists cannot change under us).
        for i in range(n):
            item = src_groups[i]
            if not _is_int(item):
                raise TypeError(f"message {i} has key group {(<object>item)!r:.60}; key groups "
                                f"are integers")
            g = _int_value(item)
            if <size_t>g >= <size_t>G:
                if g == -1 and PyErr_Occurred() != NULL:
                    PyErr_Clear()
                raise ValueError(f"message {i} has key group {(<object>item)}, outside "
                                 f"0..{G - 1}")
            d = owners[g]
            dest[i] = d
            count[d] += 1

        # All to one destination: the batch goes there whole.
        d = dest[0]
        if count[d] == n:
            return _whole(batch, d, D, has_watermark)

        # One batch per destination that gets messages, with lists of exactly its size: their
        # slots are all filled below, before any Python code can see them.
        for d in range(D):
            c = count[d]
            if c == 0:
                if has_watermark:
                    if empty is None:
                        empty = _like(batch, [], None, None, None)
                    result[d] = empty
                continue
            b = _like(batch, PyList_New(c), PyList_New(c), PyList_New(c),
                      None if times is None else PyList_New(c))
            result[d] = b
            slot = slots + 4 * d
            slot[0] = (<PyListObject*>b.values).ob_item
            slot[1] = (<PyListObject*>b.keys).ob_item
            slot[2] = (<PyListObject*>b.groups).ob_item
            if times is not None:
                slot[3] = (<PyListObject*>b.event_times).ob_item

        # Pass 2: each message (a new reference to each of its objects) into the next free
        # slots of its destination. Making the batches above may have run a garbage collection
        # and so Python code (a finalizer): the source lists are looked at afresh, and from here
        # on only C runs.
        if len(values) != n or len(keys) != n or len(groups) != n or (
                times is not None and len(times) != n):
            raise RuntimeError("the batch changed while it was being routed")
        src_values = (<PyListObject*>values).ob_item
        src_keys = (<PyListObject*>keys).ob_item
        src_groups = (<PyListObject*>groups).ob_item
        src_times = NULL if times is None else (<PyListObject*>times).ob_item
        if times is None:
            for i in range(n):
                slot = slots + 4 * dest[i]
                item = src_values[i]; _incref(item); slot[0][0] = item; slot[0] += 1
                item = src_keys[i]; _incref(item); slot[1][0] = item; slot[1] += 1
                item = src_groups[i]; _incref(item); slot[2][0] = item; slot[2] += 1
        else:
            for i in range(n):
                slot = slots + 4 * dest[i]
                item = src_values[i]; _incref(item); slot[0][0] = item; slot[0] += 1
                item = src_keys[i]; _incref(item); slot[1][0] = item; slot[1] += 1
                item = src_groups[i]; _incref(item); slot[2][0] = item; slot[2] += 1
                item = src_times[i]; _incref(item); slot[3][0] = item; slot[3] += 1
        return result
    finally:
        if dest != stack_dest:
            PyMem_Free(dest)
        if count != stack_count:
            PyMem_Free(count)
        if slots != stack_slots:
            PyMem_Free(slots)


cpdef bint same_objects(list a, list b):
    """Whether lists ``a`` and ``b`` hold the very same objects, in the same order (as the
    keys and values of a batch keyed by the values themselves): an exchange then sends them
    once.

    Example::

        >>> words = ["a", "b"]
        >>> same_objects(words, list(words)), same_objects(words, ["a", "c"])
        (True, False)
    """
    cdef Py_ssize_t i, n
    if a is None or b is None:
        return False
    n = len(a)
    if len(b) != n:
        return False
    for i in range(n):
        if _list_get(<PyObject*>a, i) != _list_get(<PyObject*>b, i):
            return False
    return True
