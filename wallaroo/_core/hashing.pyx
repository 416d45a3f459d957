# cython: language_level=3
"""Stable key hashing: a key always lands in the same key group, in every process and run.

Python's ``hash()`` is salted per process, so keys are hashed here with 64-bit FNV-1a over their
UTF-8 (str) or raw (bytes) form, finished with the murmur3 avalanche step.

Example::

    >>> from wallaroo._core.hashing import key_group, normalize_key
    >>> key_group("apple", 2048) == key_group(b"apple", 2048)
    True
    >>> normalize_key(42)
    '42'
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint64_t

DEFAULT_KEY_GROUPS = 2048


cdef inline uint64_t _fnv1a(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h ^= p[i]
        h *= 1099511628211ULL
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


cdef uint64_t hash_key(object key) except? 0:
    """The stable 64-bit hash of a normalized key (str or bytes)."""
    cdef const char* p
    cdef Py_ssize_t n
    if type(key) is str:
        p = PyUnicode_AsUTF8AndSize(key, &n)
    elif type(key) is bytes:
        p = PyBytes_AS_STRING(key)
        n = PyBytes_GET_SIZE(key)
    else:
        raise TypeError(f"keys must be str or bytes, not {type(key).__name__}")
    return _fnv1a(<const unsigned char*>p, n)


def stable_hash(key):
    """The stable 64-bit hash of a key (after ``normalize_key``).

    Example::

        >>> stable_hash("a") == stable_hash("a")
        True
    """
    return hash_key(normalize_key(key))


cpdef object normalize_key(object key):
    """A key as the engine keeps it: str and bytes as they are, an int as its decimal str.

    Anything else raises TypeError naming the type.

    Example::

        >>> normalize_key(b"k"), normalize_key(7)
        (b'k', '7')
    """
    cdef type t = type(key)
    if t is str or t is bytes:
        return key
    if isinstance(key, str):
        return str(key)
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return str(int(key))
    raise TypeError(f"a key must be str, bytes or int, not {t.__name__} ({key!r:.60})")


cpdef Py_ssize_t key_group(object key, Py_ssize_t groups) except -1:
    """The key group (0 <= g < groups) a key belongs to.

    Example::

        >>> 0 <= key_group("k", 16) < 16
        True
    """
    if groups <= 0:
        raise ValueError(f"the number of key groups must be positive, not {groups}")
    return <Py_ssize_t>(hash_key(normalize_key(key)) % <uint64_t>groups)
