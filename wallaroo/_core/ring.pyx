# cython: language_level=3
"""Shared-memory rings: a queue of byte records from exactly one producer process to exactly
one consumer process, through a memory mapping both processes share.

``Ring.create(capacity)`` makes a ring in a fresh ``memfd`` (anonymous shared memory); its
``fd`` is handed to the other process (``subprocess.Popen(..., pass_fds=[ring.fd])``), which
maps the same memory with ``Ring.attach(fd)``. One side calls ``write``, the other ``read`` or
``read_many``; neither ever blocks or makes a system call. Waking a sleeping side is left to
the caller (``wallaroo.runtime.rings`` does it with eventfds), helped by two flags in the
ring: ``consumer_waiting`` and ``producer_waiting``.

The mapping holds a header, then the data area (``capacity`` bytes, a power of two):

- line 0: magic number, layout version, header size and capacity (written once, at creation);
- line 1: ``head``, the bytes ever written (u64, stored only by the producer);
- line 2: ``tail``, the bytes ever consumed (u64, stored only by the consumer);
- line 3: ``consumer_waiting`` (u32); line 4: ``producer_waiting`` (u32).

Each field has a 128-byte line of its own (two cache lines, so that adjacent-line prefetching
does not make the producer and the consumer fight over one), so the header is 640 bytes. The
counters only grow; a byte's place in the data area is its counter masked by
``capacity - 1``. The ring holds ``head - tail`` bytes.

A record is a u32 length, then the payload, padded to a multiple of 8 bytes, so every record
starts 8-byte aligned. A record never straddles the end of the data area: when one does not fit
in what is left before the end, the producer writes a wrap marker (length ``0xFFFFFFFF``) and
the record at offset 0. A record of up to ``max_record`` bytes (half the capacity, less the
4-byte length) therefore always fits in an empty ring.

The producer copies a record in, then publishes the new ``head`` with a release store; the
consumer reads ``head`` with an acquire load, copies records out, then publishes the new
``tail`` with a release store. Each side caches the other's counter and reloads it only when
the cached one says the ring is full (producer) or empty (consumer); a cache never runs ahead
of the counter, so another ``Ring`` object (a restarted process's) may take over a side.

Example::

    >>> import os
    >>> ring = Ring.create(4096)
    >>> ring.capacity, ring.max_record
    (4096, 2044)
    >>> ring.write(b"hello"), ring.write(bytearray(b"world!")), ring.used
    (True, True, 32)
    >>> other = Ring.attach(os.dup(ring.fd))     # what a child does with the fd it inherited
    >>> other.read(), other.read_many(10), other.read()
    (b'hello', [b'world!'], None)
    >>> ring.used, other.free
    (0, 4096)
    >>> other.close(); ring.close()
"""
import operator
import os
import stat

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytes cimport PyBytes_CheckExact
from libc.errno cimport errno
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from posix.unistd cimport close as c_close

# The atomics: GCC/Clang builtins on the shared header's fields.
cdef extern from *:
    """
    #include <stdint.h>
    #define WALLAROO_RING_MAGIC 0x474e49524c4c4157ULL   /* "WALLRING", little-endian */
    #define WALLAROO_RING_WRAP 0xFFFFFFFFu
    static inline uint64_t wallaroo_ring_load_relaxed(const uint64_t* p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline uint64_t wallaroo_ring_load_acquire(const uint64_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void wallaroo_ring_store_release(uint64_t* p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    /* The flags serve the "set my flag, re-check the ring" / "update the ring, check the
       other's flag" protocol (Dekker's): each side stores, then loads what the other stores.
       A full fence between the store and the load on both sides is what makes it race-free,
       so setting a flag ends with one and reading a flag starts with one. */
    static inline uint32_t wallaroo_ring_flag_get(const uint32_t* p) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void wallaroo_ring_flag_set(uint32_t* p, uint32_t v) {
        __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    """
    const uint64_t RING_MAGIC "WALLAROO_RING_MAGIC"
    const uint32_t WRAP "WALLAROO_RING_WRAP"
    uint64_t load_relaxed "wallaroo_ring_load_relaxed"(const uint64_t* p) nogil
    uint64_t load_acquire "wallaroo_ring_load_acquire"(const uint64_t* p) nogil
    void store_release "wallaroo_ring_store_release"(uint64_t* p, uint64_t v) nogil
    uint32_t flag_get "wallaroo_ring_flag_get"(const uint32_t* p) nogil
    void flag_set "wallaroo_ring_flag_set"(uint32_t* p, uint32_t v) nogil

# The header's layout (byte offsets into the mapping).
cdef enum:
    VERSION = 1
    LINE = 128
    OFF_MAGIC = 0           # u64
    OFF_VERSION = 8         # u32
    OFF_HEADER_SIZE = 12    # u32
    OFF_CAPACITY = 16       # u64
    OFF_HEAD = LINE         # u64
    OFF_TAIL = 2 * LINE     # u64
    OFF_CONSUMER_WAITING = 3 * LINE     # u32
    OFF_PRODUCER_WAITING = 4 * LINE     # u32
    HEADER = 5 * LINE
    LENGTH = 4              # a record's length prefix

HEADER_SIZE = HEADER
MIN_CAPACITY = 4096
MAX_CAPACITY = 1 << 30


cdef inline uint64_t _record_size(uint64_t n) nogil:
    """The bytes a record of ``n`` payload bytes takes: length prefix and padding."""
    return (LENGTH + n + 7) & ~(<uint64_t>7)


cdef class Ring:
    """One direction of a shared-memory ring: create with ``Ring.create``, map the same ring in
    another process with ``Ring.attach``; one process writes, the other reads.

    A ``Ring`` owns its fd: ``close()`` (idempotent; also on garbage collection and at the end
    of a ``with`` block) unmaps the ring and closes the fd. Other processes that attached keep
    their own mapping, and the memory is freed when the last one lets go.

    Example::

        >>> ring = Ring.create(5000)      # rounded up to a power of two
        >>> ring.capacity, [ring.write(b"x" * 3000) for _ in range(3)]
        (8192, [True, True, False])
        >>> ring.write(b"z" * 5000)
        Traceback (most recent call last):
        ...
        ValueError: a record of 5000 bytes exceeds this ring's max_record of 4092 bytes (capacity 8192)
        >>> ring.close()
    """

    cdef char* base             # the whole mapping
    cdef char* data             # the data area
    cdef uint64_t* head_p
    cdef uint64_t* tail_p
    cdef uint32_t* consumer_waiting_p
    cdef uint32_t* producer_waiting_p
    cdef size_t map_size
    cdef uint64_t cap
    cdef uint64_t mask
    cdef uint64_t limit         # max_record
    cdef uint64_t known_tail    # the producer's view of tail (never ahead of it)
    cdef uint64_t known_head    # the consumer's view of head (never ahead of it)
    cdef int _fd

    def __cinit__(self):
        self.base = NULL
        self._fd = -1

    def __init__(self):
        raise TypeError("make a Ring with Ring.create(capacity) or Ring.attach(fd)")

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.map_size)
            self.base = NULL
        if self._fd >= 0:
            c_close(self._fd)
            self._fd = -1

    @staticmethod
    cdef Ring _mapped(int fd, size_t size):
        """A Ring over ``size`` bytes of ``fd``, mapped shared; the fd is not yet its own."""
        cdef void* p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        cdef int err
        if p == MAP_FAILED:
            err = errno
            raise OSError(err, os.strerror(err))
        cdef Ring ring = Ring.__new__(Ring)
        ring.base = <char*>p
        ring.map_size = size
        ring.data = ring.base + HEADER
        ring.head_p = <uint64_t*>(ring.base + OFF_HEAD)
        ring.tail_p = <uint64_t*>(ring.base + OFF_TAIL)
        ring.consumer_waiting_p = <uint32_t*>(ring.base + OFF_CONSUMER_WAITING)
        ring.producer_waiting_p = <uint32_t*>(ring.base + OFF_PRODUCER_WAITING)
        return ring

    cdef void _set_capacity(self, uint64_t capacity):
        self.cap = capacity
        self.mask = capacity - 1
        self.limit = capacity // 2 - LENGTH
        self.known_tail = load_acquire(self.tail_p)
        self.known_head = load_acquire(self.head_p)

    @staticmethod
    def create(capacity):
        """A new, empty ring of at least ``capacity`` bytes of data (rounded up to a power of
        two, at least 4096; more than 1 GiB raises ValueError), in a new memfd.

        Example::

            >>> ring = Ring.create(1)
            >>> ring.capacity, ring.used, ring.fd >= 0
            (4096, 0, True)
            >>> ring.close()
            >>> Ring.create(2 ** 31)
            Traceback (most recent call last):
            ...
            ValueError: a ring's capacity is at most 1 GiB (1073741824 bytes), not 2147483648
        """
        requested = operator.index(capacity)
        if requested < 1:
            raise ValueError(f"a ring's capacity must be positive, not {requested}")
        if requested > MAX_CAPACITY:
            raise ValueError(f"a ring's capacity is at most 1 GiB ({MAX_CAPACITY} bytes), "
                             f"not {requested}")
        cdef uint64_t cap = MIN_CAPACITY
        while cap < <uint64_t>requested:
            cap <<= 1
        fd = os.memfd_create("wallaroo-ring")      # close-on-exec: pass_fds hands it on
        cdef Ring ring
        try:
            os.ftruncate(fd, HEADER + cap)
            ring = Ring._mapped(fd, HEADER + cap)
        except BaseException:
            os.close(fd)
            raise
        ring._fd = fd
        # A new memfd reads as zeros: head, tail and both flags start at 0.
        (<uint32_t*>(ring.base + OFF_VERSION))[0] = VERSION
        (<uint32_t*>(ring.base + OFF_HEADER_SIZE))[0] = HEADER
        (<uint64_t*>(ring.base + OFF_CAPACITY))[0] = cap
        store_release(<uint64_t*>(ring.base + OFF_MAGIC), RING_MAGIC)
        ring._set_capacity(cap)
        return ring

    @staticmethod
    def attach(int fd):
        """The ring in ``fd`` (the fd of a ``Ring.create``, inherited or duplicated), mapped
        into this process. On success the new Ring owns ``fd`` (its ``close`` closes it); on
        failure the fd is left open. An fd that holds no ring raises ValueError saying why; an
        fd that is not open raises OSError.

        Example::

            >>> import tempfile
            >>> with tempfile.TemporaryFile() as f:
            ...     _ = f.write(bytes(8192))
            ...     Ring.attach(f.fileno())  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: fd ... is not a ring: it does not start with a ring's magic number
        """
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"fd {fd} is not a ring: it is not a memfd or regular file "
                             f"(file mode {stat.filemode(st.st_mode)})")
        size = st.st_size
        if size < HEADER + MIN_CAPACITY:
            raise ValueError(f"fd {fd} is not a ring: it holds {size} bytes, fewer than the "
                             f"smallest ring ({HEADER + MIN_CAPACITY} bytes)")
        if size > HEADER + MAX_CAPACITY:
            raise ValueError(f"fd {fd} is not a ring: it holds {size} bytes, more than the "
                             f"largest ring ({HEADER + MAX_CAPACITY} bytes)")
        cdef Ring ring = Ring._mapped(fd, size)     # does not own fd yet: dealloc won't close it
        if load_acquire(<uint64_t*>(ring.base + OFF_MAGIC)) != RING_MAGIC:
            raise ValueError(f"fd {fd} is not a ring: it does not start with a ring's magic "
                             f"number")
        version = (<uint32_t*>(ring.base + OFF_VERSION))[0]
        header = (<uint32_t*>(ring.base + OFF_HEADER_SIZE))[0]
        if version != VERSION or header != HEADER:
            raise ValueError(f"fd {fd} holds a ring of another layout (version {version}, "
                             f"header of {header} bytes; this is version {VERSION}, {HEADER} "
                             f"bytes)")
        cdef uint64_t cap = (<uint64_t*>(ring.base + OFF_CAPACITY))[0]
        if (cap < MIN_CAPACITY or cap > MAX_CAPACITY or (cap & (cap - 1)) != 0
                or HEADER + cap != <uint64_t>size):
            raise ValueError(f"fd {fd} is not a ring: its header gives a capacity of {cap} "
                             f"bytes, which does not match its size ({size} bytes) or is not a "
                             f"power of two from {MIN_CAPACITY} to {MAX_CAPACITY}")
        ring._set_capacity(cap)
        ring._fd = fd
        return ring

    def close(self):
        """Unmap the ring and close its fd; closing again does nothing.

        Example::

            >>> ring = Ring.create(4096); ring.close(); ring.close(); ring.closed, ring.fd
            (True, -1)
            >>> ring.read()
            Traceback (most recent call last):
            ...
            ValueError: the ring is closed
        """
        if self.base != NULL:
            munmap(self.base, self.map_size)
            self.base = NULL
        fd = self._fd
        if fd >= 0:
            self._fd = -1
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef inline int _check(self) except -1:
        if self.base == NULL:
            raise ValueError("the ring is closed")
        return 0

    # --------------------------------------------------------------------------------------
    # the producer's side

    def write(self, data):
        """Append one record holding ``data`` (bytes, bytearray, memoryview or any other
        bytes-like object); True once it is published, False (nothing written) when the ring
        lacks the room right now. Data longer than ``max_record`` raises ValueError.

        Producer only: at most one process (and thread) may write to a ring.

        Example::

            >>> ring = Ring.create(4096)
            >>> [ring.write(memoryview(bytes(1000))) for _ in range(5)]
            [True, True, True, True, False]
            >>> ring.close()
        """
        self._check()
        cdef Py_buffer view
        if PyBytes_CheckExact(data):
            return self._put(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except BufferError:             # bytes-like, but not contiguous
            data = memoryview(data).tobytes()
            return self._put(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        try:
            return self._put(<const char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef bint _put(self, const char* src, Py_ssize_t n) except -1:
        if <uint64_t>n > self.limit:
            raise ValueError(f"a record of {n} bytes exceeds this ring's max_record of "
                             f"{self.limit} bytes (capacity {self.cap})")
        cdef uint64_t head = load_relaxed(self.head_p)
        cdef uint64_t pos = head & self.mask
        cdef uint64_t size = _record_size(n)
        cdef uint64_t to_end = self.cap - pos
        cdef uint64_t need = size if size <= to_end else to_end + size
        if head + need - self.known_tail > self.cap:
            self.known_tail = load_acquire(self.tail_p)
            if head + need - self.known_tail > self.cap:
                return False
        if size > to_end:
            (<uint32_t*>(self.data + pos))[0] = WRAP
            head += to_end
            pos = 0
        (<uint32_t*>(self.data + pos))[0] = <uint32_t>n
        memcpy(self.data + pos + LENGTH, src, n)
        store_release(self.head_p, head + size)
        return True

    # --------------------------------------------------------------------------------------
    # the consumer's side

    def read(self):
        """The oldest record as bytes (a copy; its room is freed at once), or None when the
        ring is empty. Consumer only: at most one process (and thread) may read a ring.

        Example::

            >>> ring = Ring.create(4096)
            >>> ring.write(b""), ring.read(), ring.read()
            (True, b'', None)
            >>> ring.close()
        """
        self._check()
        cdef uint64_t tail = load_relaxed(self.tail_p)
        if tail >= self.known_head:
            self.known_head = load_acquire(self.head_p)
            if tail >= self.known_head:
                return None
        record = self._take(&tail)
        store_release(self.tail_p, tail)
        return record

    def read_many(self, Py_ssize_t max_records):
        """Up to ``max_records`` of the oldest records, as a list of bytes (empty when the ring
        is), oldest first; their room is freed once all are copied. Consumer only.

        Example::

            >>> ring = Ring.create(4096)
            >>> [ring.write(bytes([i]) * i) for i in range(4)]
            [True, True, True, True]
            >>> ring.read_many(3), ring.read_many(3), ring.read_many(3)
            ([b'', b'\\x01', b'\\x02\\x02'], [b'\\x03\\x03\\x03'], [])
            >>> ring.close()
        """
        self._check()
        if max_records < 0:
            raise ValueError(f"max_records must be 0 or more, not {max_records}")
        cdef list out = []
        cdef uint64_t tail = load_relaxed(self.tail_p)
        cdef uint64_t start = tail
        cdef Py_ssize_t i
        for i in range(max_records):
            if tail >= self.known_head:
                self.known_head = load_acquire(self.head_p)
                if tail >= self.known_head:
                    break
            out.append(self._take(&tail))
        if tail != start:
            store_release(self.tail_p, tail)
        return out

    cdef bytes _take(self, uint64_t* tail_io):
        """The record at ``tail_io[0]`` (the ring holds one there: ``known_head`` is past it);
        advances ``tail_io[0]`` past it. Checks what the producer wrote, as it is shared."""
        cdef uint64_t tail = tail_io[0]
        cdef uint64_t pos = tail & self.mask
        cdef uint32_t n = (<uint32_t*>(self.data + pos))[0]
        if n == WRAP:
            tail += self.cap - pos
            pos = 0
            if tail >= self.known_head:
                raise RuntimeError("the ring is corrupted: a wrap marker with no record after it")
            n = (<uint32_t*>(self.data + pos))[0]
        cdef uint64_t size = _record_size(n)
        if n > self.limit or tail + size > self.known_head:
            raise RuntimeError(f"the ring is corrupted: a record of length {n} at offset {pos}, "
                               f"with {self.known_head - tail} bytes published")
        record = PyBytes_FromStringAndSize(self.data + pos + LENGTH, n)
        tail_io[0] = tail + size
        return record

    # --------------------------------------------------------------------------------------
    # state

    @property
    def fd(self):
        """The memfd holding the ring (-1 once closed): pass it to the other process."""
        return self._fd

    @property
    def closed(self):
        """True once ``close`` was called."""
        return self.base == NULL

    @property
    def capacity(self):
        """The size of the data area in bytes (a power of two)."""
        return self.cap

    @property
    def max_record(self):
        """The longest payload a record may have: ``capacity // 2 - 4``."""
        return self.limit

    @property
    def used(self):
        """The bytes the ring holds now (records with their length prefixes and padding, and
        wrap gaps); a snapshot, as the other side may be moving."""
        self._check()
        cdef uint64_t tail = load_acquire(self.tail_p)     # tail first: never more than head
        return load_acquire(self.head_p) - tail

    @property
    def free(self):
        """``capacity - used``. A record of ``n`` bytes needs ``(n + 4)`` rounded up to a
        multiple of 8, plus the bytes left before the end of the data area when it must wrap."""
        return self.cap - self.used

    @property
    def consumer_waiting(self):
        """The consumer's "wake me when there are records" flag. The consumer sets it, then
        re-checks the ring before sleeping; the producer reads it after each write. Setting
        and reading are atomic, with a full fence (after the store, before the load), so
        between the two sides one always sees the other's update: no wake-up is lost.

        Example::

            >>> ring = Ring.create(4096)
            >>> ring.consumer_waiting = True; ring.consumer_waiting, ring.producer_waiting
            (True, False)
            >>> ring.close()
        """
        self._check()
        return flag_get(self.consumer_waiting_p) != 0

    @consumer_waiting.setter
    def consumer_waiting(self, bint value):
        self._check()
        flag_set(self.consumer_waiting_p, value)

    @property
    def producer_waiting(self):
        """The producer's "wake me when there is room" flag: the mirror of
        ``consumer_waiting`` (the producer sets it and re-checks; the consumer reads it after
        freeing room)."""
        self._check()
        return flag_get(self.producer_waiting_p) != 0

    @producer_waiting.setter
    def producer_waiting(self, bint value):
        self._check()
        flag_set(self.producer_waiting_p, value)

    def __repr__(self):
        if self.base == NULL:
            return "<Ring (closed)>"
        return f"<Ring fd={self._fd} capacity={self.cap} used={self.used}>"

