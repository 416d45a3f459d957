# cython: language_level=3
"""Batch serialization: batches crossing processes (between workers) and state in snapshots.

Plain data (None, bool, int within 64 bits, float, str, bytes, and lists, tuples and dicts of
those, nested) is written as msgpack and comes back equal and of the same types: a tuple stays
a tuple, bytes stay bytes, a dict may have keys of any plain type. Anything else anywhere in a
batch (a user class, a set, a bytearray, a subclass of a plain type, an int beyond 64 bits, a
str with lone surrogates, a value of over 100 nested containers or over 16 nested tuples)
sends the whole batch to pickle (protocol 5). An app module that defines ``serialize(obj) ->
bytes`` and ``deserialize(bytes) -> obj`` has each value written by those instead, the metadata
still in msgpack.

Whether a batch is plain is decided by one walk over it in C before msgpack runs (msgpack
itself would write a bytearray as bytes, say). The only Python work per value beyond msgpack's
own is its hook for each tuple, and a short tuple of leaves such as ``(word, count)`` is
written and read there in C.

Format: one format byte, then the payload.

    ====  ================================================================================
    bit   format byte
    ====  ================================================================================
    0x01  ``MSGPACK``: the payload is msgpack
    0x02  ``PICKLE``: the payload is pickle, protocol 5 (exactly one of the two is set)
    0x04  ``APP_SERIALIZER``: each value is the bytes the app's ``serialize`` returned
    0x10  ``VALUES``: the payload is a list of values (``encode_values``), not a batch
    ====  ================================================================================

So a batch is ``0x01`` (msgpack), ``0x02`` (pickle) or ``0x05`` (app-serialized values,
msgpack metadata; ``0x06`` if the metadata itself is not plain); a values list is ``0x11``,
``0x12`` or ``0x15``. A batch payload is the list of its nine fields ``[values, keys, groups,
key, group, ingest_ns, event_times, origin, watermark]`` (see ``chain.Batch``); a values payload
is the list itself. In msgpack a tuple is extension type 1 whose data is the msgpack array of
its items. Decoding checks the format byte and the payload's shape and raises ValueError
naming what is wrong (empty input, unknown format byte, a values payload given as a batch,
truncated or corrupt payload); pickle payloads run code when loaded, so decode only bytes
written by this engine.

Example::

    >>> from wallaroo._core.chain import Batch
    >>> from wallaroo._core.serde import MSGPACK, decode_batch, encode_batch
    >>> data = encode_batch(Batch([("a", 1), b"raw"], key="k", ingest_ns=5))
    >>> data[0] == MSGPACK
    True
    >>> b = decode_batch(data)
    >>> b.values, b.key, b.ingest_ns
    ([('a', 1), b'raw'], 'k', 5)
"""
import pickle

from msgpack import ExtType, Packer, unpackb
from msgpack.exceptions import ExtraData, FormatError, StackError

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.list cimport PyList_AsTuple
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.sequence cimport PySequence_List
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint64_t
from libc.string cimport memcpy
from wallaroo._core.chain cimport Batch

cdef enum:
    F_MSGPACK = 0x01
    F_PICKLE = 0x02
    F_CODEC = 0x03
    F_APP = 0x04
    F_VALUES = 0x10
    TUPLE_EXT = 1            # msgpack extension type code of a tuple
    MAX_DEPTH = 100          # deeper nesting goes to pickle (bounds the C recursion)
    MAX_TUPLE_DEPTH = 16     # so do tuples in tuples deeper than this: each level of them is a
                             # nested msgpack unpack, whose context takes ~45 KB of C stack
    BUF_SIZE = 64 * 1024     # initial buffer of the shared packer
    BIG_OUTPUT = 4 << 20     # after an output this large, the shared packer's buffer is let go

#: Format byte bit: the payload is msgpack.
MSGPACK = F_MSGPACK
#: Format byte bit: the payload is pickle (protocol 5).
PICKLE = F_PICKLE
#: Format byte bit: each value was written by the app's ``serialize``.
APP_SERIALIZER = F_APP
#: Format byte bit: the payload is a list of values (``encode_values``), not a batch.
VALUES = F_VALUES

cdef extern from "Python.h":
    object PyType_GenericAlloc(PyTypeObject* t, Py_ssize_t nitems)

cdef type _NoneType = type(None)
cdef object _NOT_LEAF = object()
cdef tuple _BATCH_FIELDS = ("values", "keys", "groups", "key", "group", "ingest_ns",
                            "event_times", "origin", "watermark")


# ------------------------------------------------------------------------------------------
# plain data


cdef inline bint _leaf(type t) noexcept:
    return t is str or t is int or t is float or t is bytes or t is _NoneType or t is bool


cdef bint _plain(object o, int depth, int tuple_depth) noexcept:
    """Whether ``o`` is plain data that msgpack writes and reads back as the same types (ints
    beyond 64 bits are left to msgpack, which hands them to ``_default``). ``depth`` counts the
    containers around ``o``, ``tuple_depth`` the tuples."""
    cdef type t = type(o)
    cdef Py_ssize_t pos = 0
    cdef PyObject* k
    cdef PyObject* v
    if _leaf(t):
        return True
    if depth >= MAX_DEPTH:
        return False
    if t is list:
        for item in <list>o:
            if not _leaf(type(item)) and not _plain(item, depth + 1, tuple_depth):
                return False
        return True
    if t is tuple:
        if tuple_depth >= MAX_TUPLE_DEPTH:
            return False
        for item in <tuple>o:
            if not _leaf(type(item)) and not _plain(item, depth + 1, tuple_depth + 1):
                return False
        return True
    if t is dict:
        while PyDict_Next(o, &pos, &k, &v):
            if not _leaf(type(<object>k)) and not _plain(<object>k, depth + 1, tuple_depth):
                return False
            if not _leaf(type(<object>v)) and not _plain(<object>v, depth + 1, tuple_depth):
                return False
        return True
    return False


# msgpack's hooks for tuples. With strict_types msgpack hands a tuple to _default, which packs
# its items (as a list) into the data of an ExtType; _ext_hook reads them back. A packer cannot
# be re-entered while it packs, so each level of tuple nesting has a packer of its own.
cdef list _tuple_packs = []         # the bound ``pack`` of the packer of each nesting level
cdef Py_ssize_t _tuple_depth = 0    # tuples being packed now, one inside the other
cdef Py_ssize_t _ext_depth = 0      # tuples being unpacked now, one inside the other
cdef object _TUPLE_EXT = TUPLE_EXT


# The common tuple holds only leaves, e.g. (word, count): its extension data is written and
# read here in C, in msgpack's own encoding (the bytes msgpack.packb(list(t)) would give), which
# saves a nested pack or unpack per tuple. Anything else (a container inside, an int msgpack
# writes as uint64, data that is not in this form) goes through msgpack.
cdef enum:
    LEAF_TUPLE_BUF = 256     # leaf tuples whose encoding is longer go through msgpack


cdef inline Py_ssize_t _put_be(unsigned char* buf, Py_ssize_t pos, uint64_t v, int n) noexcept:
    """Write the low ``n`` bytes of ``v`` big-endian at ``buf[pos]``; the position after."""
    cdef int i
    for i in range(n):
        buf[pos + i] = <unsigned char>(v >> (8 * (n - 1 - i)))
    return pos + n


cdef inline Py_ssize_t _put_head(unsigned char* buf, Py_ssize_t pos, unsigned char tag,
                                 uint64_t v, int n) noexcept:
    buf[pos] = tag
    return _put_be(buf, pos + 1, v, n)


cdef Py_ssize_t _put_leaf(unsigned char* buf, Py_ssize_t pos, object o) except -2:
    """Write leaf ``o`` at ``buf[pos]`` (room: LEAF_TUPLE_BUF); the position after, or -1 when
    ``o`` is not a leaf written here or does not fit."""
    cdef type t = type(o)
    cdef long long v
    cdef int overflow = 0
    cdef double d
    cdef uint64_t bits
    cdef const char* raw
    cdef Py_ssize_t n
    if pos + 9 > LEAF_TUPLE_BUF:
        return -1
    if t is int:
        v = PyLong_AsLongLongAndOverflow(o, &overflow)
        if overflow:
            return -1
        if v >= 0:
            if v < 0x80:
                buf[pos] = <unsigned char>v
                return pos + 1
            if v < 0x100:
                return _put_head(buf, pos, 0xcc, v, 1)
            if v < 0x10000:
                return _put_head(buf, pos, 0xcd, v, 2)
            if v < 0x100000000:
                return _put_head(buf, pos, 0xce, v, 4)
            return _put_head(buf, pos, 0xcf, v, 8)
        if v >= -32:
            buf[pos] = <unsigned char>(<int>v & 0xff)
            return pos + 1
        if v >= -0x80:
            return _put_head(buf, pos, 0xd0, <uint64_t>v, 1)
        if v >= -0x8000:
            return _put_head(buf, pos, 0xd1, <uint64_t>v, 2)
        if v >= -0x80000000:
            return _put_head(buf, pos, 0xd2, <uint64_t>v, 4)
        return _put_head(buf, pos, 0xd3, <uint64_t>v, 8)
    if t is str:
        raw = PyUnicode_AsUTF8AndSize(o, &n)       # raises for lone surrogates: pickle then
        if n < 32:
            buf[pos] = 0xa0 | <unsigned char>n
            pos += 1
        elif n < 0x100:
            pos = _put_head(buf, pos, 0xd9, n, 1)
        else:
            return -1
    elif t is bytes:
        raw = PyBytes_AS_STRING(o)
        n = PyBytes_GET_SIZE(o)
        if n >= 0x100:
            return -1
        pos = _put_head(buf, pos, 0xc4, n, 1)
    elif t is float:
        d = PyFloat_AS_DOUBLE(o)
        memcpy(&bits, &d, 8)
        return _put_head(buf, pos, 0xcb, bits, 8)
    elif o is None:
        buf[pos] = 0xc0
        return pos + 1
    elif t is bool:
        buf[pos] = 0xc3 if o is True else 0xc2
        return pos + 1
    else:
        return -1
    if pos + n > LEAF_TUPLE_BUF:
        return -1
    memcpy(buf + pos, raw, n)
    return pos + n


cdef object _pack_leaf_tuple(tuple t):
    """The msgpack bytes of ``list(t)`` when ``t`` holds only leaves and they are short; else
    None."""
    cdef unsigned char buf[LEAF_TUPLE_BUF]
    cdef Py_ssize_t pos = 1, n = len(t)
    if n >= 16:
        return None
    buf[0] = 0x90 | <unsigned char>n
    for item in t:
        pos = _put_leaf(buf, pos, item)
        if pos < 0:
            return None
    return PyBytes_FromStringAndSize(<char*>buf, pos)


cdef inline uint64_t _get_be(const unsigned char* p, int n) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v


cdef object _get_leaf(const unsigned char* p, Py_ssize_t end, Py_ssize_t* at):
    """The leaf at ``p[at[0]]`` (moving ``at`` past it), or _NOT_LEAF when it is not a leaf
    read here or runs past ``end``."""
    cdef Py_ssize_t pos = at[0], n
    cdef unsigned char tag = p[pos]
    cdef uint64_t bits
    cdef double d
    cdef int size
    pos += 1
    if tag < 0x80:
        at[0] = pos
        return <long>tag
    if tag >= 0xe0:
        at[0] = pos
        return <long><signed char>tag
    if 0xa0 <= tag <= 0xbf or tag == 0xd9 or tag == 0xc4:     # fixstr, str8, bin8
        if tag == 0xd9 or tag == 0xc4:
            if pos >= end:
                return _NOT_LEAF
            n = p[pos]
            pos += 1
        else:
            n = tag & 0x1f
        if pos + n > end:
            return _NOT_LEAF
        at[0] = pos + n
        if tag == 0xc4:
            return PyBytes_FromStringAndSize(<const char*>p + pos, n)
        return PyUnicode_DecodeUTF8(<const char*>p + pos, n, NULL)
    if tag == 0xc0:
        at[0] = pos
        return None
    if tag == 0xc2 or tag == 0xc3:
        at[0] = pos
        return tag == 0xc3
    if 0xcb <= tag <= 0xd3:         # float64, uint8-64, int8-64 (0xcb-0xd3 but not float32)
        size = 8 if tag == 0xcb else 1 << ((tag - 0xcc) & 3)
        if pos + size > end:
            return _NOT_LEAF
        bits = _get_be(p + pos, size)
        at[0] = pos + size
        if tag == 0xcb:
            memcpy(&d, &bits, 8)
            return d
        if tag <= 0xcf:
            return bits
        if size == 1:
            return <long><int8_t>bits
        if size == 2:
            return <long><int16_t>bits
        if size == 4:
            return <long><int32_t>bits
        return <int64_t>bits
    return _NOT_LEAF


cdef object _unpack_leaf_tuple(bytes data):
    """The tuple whose items are the msgpack array ``data``, when it holds only leaves in the
    forms written above; else None (msgpack then reads it, or says what is wrong with it)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data), pos = 1, i, n
    if end == 0 or p[0] & 0xf0 != 0x90:
        return None
    n = p[0] & 0x0f
    cdef tuple t = PyTuple_New(n)
    for i in range(n):
        if pos >= end:
            return None
        item = _get_leaf(p, end, &pos)
        if item is _NOT_LEAF:
            return None
        Py_INCREF(item)
        PyTuple_SET_ITEM(t, i, item)
    return t if pos == end else None


cdef object _tuple_ext(bytes data):
    """ExtType(TUPLE_EXT, data), made directly (ExtType is a tuple subclass whose Python
    ``__new__`` only validates, and would cost more than packing a small tuple)."""
    cdef object ext = PyType_GenericAlloc(<PyTypeObject*>ExtType, 2)
    Py_INCREF(_TUPLE_EXT)
    PyTuple_SET_ITEM(ext, 0, _TUPLE_EXT)
    Py_INCREF(data)
    PyTuple_SET_ITEM(ext, 1, data)
    return ext


def _default(object obj):
    """msgpack's hook for what it cannot write: a tuple becomes extension ``TUPLE_EXT``;
    anything else (an int beyond 64 bits) is not plain, and the batch goes to pickle."""
    global _tuple_depth
    cdef bytes data
    if type(obj) is not tuple:
        raise TypeError(f"not plain data: {type(obj).__name__}")
    data = _pack_leaf_tuple(obj)
    if data is None:
        if _tuple_depth == len(_tuple_packs):
            _tuple_packs.append(_new_packer(True, 1024).pack)
        pack = _tuple_packs[_tuple_depth]
        _tuple_depth += 1
        try:
            data = pack(PySequence_List(obj))
        finally:
            _tuple_depth -= 1
    return _tuple_ext(data) if _FAST_EXT else ExtType(TUPLE_EXT, data)


def _ext_hook(int code, bytes data):
    """msgpack's hook for extension types: the inverse of ``_default``."""
    global _ext_depth
    if code != TUPLE_EXT:
        raise ValueError(f"unknown msgpack extension type {code}")
    t = _unpack_leaf_tuple(data)
    if t is not None:
        return t
    if _ext_depth >= MAX_TUPLE_DEPTH:
        raise ValueError("tuples nested too deeply")
    _ext_depth += 1
    try:
        items = unpackb(data, ext_hook=_ext_hook, strict_map_key=False)
    finally:
        _ext_depth -= 1
    if type(items) is not list:
        raise ValueError("a tuple's msgpack data is not an array")
    return PyList_AsTuple(items)


cdef object _new_packer(bint autoreset, Py_ssize_t buf_size):
    return Packer(default=_default, use_bin_type=True, strict_types=True, autoreset=autoreset,
                  buf_size=buf_size)


cdef bint _FAST_EXT = False      # whether _tuple_ext makes what ExtType(...) makes (checked once)
_FAST_EXT = (issubclass(ExtType, tuple) and type(_tuple_ext(b"x")) is ExtType
             and _tuple_ext(b"x") == ExtType(TUPLE_EXT, b"x"))
cdef object _packer = _new_packer(False, BUF_SIZE)
cdef bint _packer_busy = False


cdef bytes _msgpack(int fmt, object obj):
    """The format byte, then ``obj`` in msgpack, written by the shared packer."""
    global _packer, _packer_busy
    cdef object packer = _packer
    cdef bint shared = not _packer_busy
    cdef bytes out
    if not shared:      # re-entered (by a finalizer the GC runs mid-pack, or a thread)
        packer = _new_packer(False, 1024)
    _packer_busy = True
    try:
        packer.pack(fmt)    # a positive fixint: msgpack writes it as exactly the byte fmt
        packer.pack(obj)
        out = packer.bytes()
    finally:
        packer.reset()
        if shared:
            _packer_busy = False
    if shared and len(out) > BIG_OUTPUT:
        _packer = _new_packer(False, BUF_SIZE)
    return out


# ------------------------------------------------------------------------------------------
# the shared encode and decode of a payload (a batch's field list, or a values list)


cdef bytes _encode(int fmt, list payload):
    """msgpack when the payload is plain, else pickle: the format byte ``fmt | codec``, then
    the payload."""
    # depth 0 is a value: the values list is at -1, a batch's field list at -2
    if _plain(payload, -1 if fmt & F_VALUES else -2, 0):
        try:
            return _msgpack(fmt | F_MSGPACK, payload)
        except (TypeError, ValueError, OverflowError):
            pass        # an int beyond 64 bits, a str with lone surrogates: pickle takes it
    try:
        return bytes((fmt | F_PICKLE,)) + pickle.dumps(payload, protocol=5)
    except Exception as exc:
        raise TypeError(f"cannot serialize: the data is not plain and pickle fails "
                        f"({type(exc).__name__}: {exc})") from exc


cdef list _serialize_all(list values, object serialize):
    """Each value through the app's ``serialize``, which must return bytes."""
    cdef list out = []
    for value in values:
        data = serialize(value)
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"serialize must return bytes, not {type(data).__name__}")
            data = bytes(data)
        out.append(data)
    return out


cdef list _deserialize_all(object values, object deserialize):
    """Each value's bytes through the app's ``deserialize``."""
    if type(values) is not list:
        raise ValueError("malformed payload: the app-serialized values are not a list")
    cdef list out = []
    for data in <list>values:
        if type(data) is not bytes:
            raise ValueError(f"malformed payload: an app-serialized value is "
                             f"{type(data).__name__}, not bytes")
        out.append(deserialize(data))
    return out


cdef str _what_went_wrong(object exc, bint is_msgpack):
    cdef str codec = "msgpack" if is_msgpack else "pickle"
    if is_msgpack:
        if isinstance(exc, ExtraData):
            return "corrupt msgpack payload: extra bytes after its end"
        if isinstance(exc, FormatError):
            return "corrupt msgpack payload: invalid msgpack data"
        if isinstance(exc, StackError):
            return "corrupt msgpack payload: nested too deeply"
        if type(exc) is ValueError and "incomplete" in str(exc):
            return "truncated payload: the msgpack data ends early"
        if type(exc) is ValueError and "exceeds max_" in str(exc):
            return f"truncated or corrupt msgpack payload: a length runs past the end ({exc})"
    elif isinstance(exc, EOFError) or "truncated" in str(exc):
        return "truncated payload: the pickle data ends early"
    return f"corrupt {codec} payload ({type(exc).__name__}: {exc})"


cdef object _decode(object data, int kind, object deserialize, int* fmt_out):
    """The payload of ``data``, a batch's (``kind`` 0) or a values list's (``kind`` VALUES),
    with the format byte in ``fmt_out``. Values stay app-serialized bytes when ``deserialize``
    is None (the caller checks)."""
    cdef object view = memoryview(data)
    cdef int fmt
    cdef bint is_msgpack
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if len(view) == 0:
        raise ValueError("empty payload: no format byte")
    fmt = view[0]
    if fmt & ~(F_CODEC | F_APP | F_VALUES) or (fmt & F_CODEC) == 0 or (fmt & F_CODEC) == F_CODEC:
        raise ValueError(f"unknown format byte 0x{fmt:02x}")
    if (fmt & F_VALUES) != kind:
        raise ValueError("a values payload (encode_values), not a batch" if kind == 0 else
                         "a batch payload (encode_batch), not a values list")
    if fmt & F_APP and deserialize is None:
        raise ValueError("the values were written by the app's serialize: pass deserialize")
    is_msgpack = fmt & F_MSGPACK
    try:
        if is_msgpack:
            payload = unpackb(view[1:], ext_hook=_ext_hook, raw=False, strict_map_key=False)
        else:
            payload = pickle.loads(view[1:])
    except Exception as exc:
        raise ValueError(_what_went_wrong(exc, is_msgpack)) from exc
    fmt_out[0] = fmt
    return payload


# ------------------------------------------------------------------------------------------
# the API


def encode_batch(Batch b not None, serialize=None):
    """The bytes of batch ``b``, every field included: msgpack when it holds only plain data,
    else pickle; with ``serialize`` (the app's ``serialize(obj) -> bytes``), each value is
    written by it instead.

    Example::

        >>> from wallaroo._core.chain import Batch
        >>> data = encode_batch(Batch([{"n": 1}, {2, 3}], key="k"))
        >>> data[0] == PICKLE, decode_batch(data).values
        (True, [{'n': 1}, {2, 3}])
    """
    cdef list values = b.values
    cdef int fmt = 0
    if serialize is not None and values is not None:
        values = _serialize_all(values, serialize)
        fmt = F_APP
    return _encode(fmt, [values, b.keys, b.groups, b.key, b.group, b.ingest_ns,
                         b.event_times, b.origin, b.watermark])


def decode_batch(data, deserialize=None):
    """The batch ``encode_batch`` wrote into ``data`` (bytes, or any bytes-like object).
    ``deserialize`` (the app's ``deserialize(bytes) -> obj``) is needed when the values were
    written by ``serialize``; what it raises passes through. Bad input raises ValueError.

    Example::

        >>> from wallaroo._core.chain import Batch
        >>> b = decode_batch(encode_batch(Batch([1], keys=["k"], groups=[7], origin="src")))
        >>> b.keys, b.groups, b.origin
        (['k'], [7], 'src')
        >>> decode_batch(b"\\x07")
        Traceback (most recent call last):
        ...
        ValueError: unknown format byte 0x07
    """
    cdef int fmt = 0
    cdef object fields = _decode(data, 0, deserialize, &fmt)
    cdef Batch b
    if type(fields) is not list or len(fields) != len(_BATCH_FIELDS):
        raise ValueError(f"malformed batch payload: not a list of {len(_BATCH_FIELDS)} fields")
    values = fields[0]
    if fmt & F_APP and values is not None:
        values = _deserialize_all(values, deserialize)
    b = Batch.__new__(Batch)
    try:
        b.values = values
        b.keys = fields[1]
        b.groups = fields[2]
        b.key = fields[3]
        b.group = fields[4]
        b.ingest_ns = fields[5]
        b.event_times = fields[6]
        b.origin = fields[7]
        b.watermark = fields[8]
    except (TypeError, OverflowError) as exc:
        raise ValueError(f"malformed batch payload: a field has the wrong type ({exc})") from exc
    return b


def encode_values(list values not None, serialize=None):
    """The bytes of a list of values (state in snapshots), by the rules of ``encode_batch``.

    Example::

        >>> data = encode_values([("a", 1), b"x", {1: None}])
        >>> data[0] == VALUES | MSGPACK, decode_values(data)
        (True, [('a', 1), b'x', {1: None}])
    """
    if serialize is not None:
        return _encode(F_VALUES | F_APP, _serialize_all(values, serialize))
    return _encode(F_VALUES, values)


def decode_values(data, deserialize=None):
    """The list ``encode_values`` wrote into ``data``; ``deserialize`` as in ``decode_batch``.

    Example::

        >>> import json
        >>> data = encode_values([{"a": 1}], serialize=lambda v: json.dumps(v).encode())
        >>> data[0] == VALUES | APP_SERIALIZER | MSGPACK
        True
        >>> decode_values(data, deserialize=json.loads)
        [{'a': 1}]
    """
    cdef int fmt = 0
    cdef object values = _decode(data, F_VALUES, deserialize, &fmt)
    if fmt & F_APP:
        return _deserialize_all(values, deserialize)
    if type(values) is not list:
        raise ValueError("malformed values payload: not a list")
    return values
