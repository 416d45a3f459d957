# cython: language_level=3
"""Splitting byte streams into messages: length-prefixed frames and text lines.

This is the first loop that touches every message coming off a socket or a file, so it is
Cython: lengths in the common struct formats are read in C, and payloads are cut with one copy.

Example::

    >>> from wallaroo._core.frames import FrameReader
    >>> r = FrameReader(4, ">I", max_size=100)
    >>> r.feed(b"\\x00\\x00\\x00\\x02hi\\x00\\x00")
    [b'hi']
    >>> r.pending
    2
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy
from libc.stdint cimport uint64_t
from cpython.pyport cimport PY_SSIZE_T_MAX


class FrameError(ValueError):
    """The stream cannot be cut into frames past this point (a bad length header).

    ``frames`` holds the complete payloads that came before the bad header in the same
    ``feed``, ``header`` the bad header's bytes; the reader drops everything after it.

    Example::

        >>> FrameError("bad header").frames
        []
    """

    def __init__(self, message):
        super().__init__(message)
        self.frames = []
        self.header = b""


class FrameTooLarge(FrameError):
    """A frame announced a payload longer than the reader's ``max_size``.

    Example::

        >>> FrameTooLarge(70000, 16384).length
        70000
    """

    def __init__(self, length, max_size):
        self.length = length
        self.max_size = max_size
        limit = f"max_size={max_size}" if max_size else "the largest possible frame"
        super().__init__(f"frame of {length} bytes is longer than {limit}")


# How a header's bytes become a length: read in C for the usual struct formats.
cdef enum LengthCode:
    CALLBACK = 0
    BIG = 1
    LITTLE = 2


cdef inline uint64_t _read_uint(const unsigned char* p, int n, bint big) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    if big:
        for i in range(n):
            v = (v << 8) | p[i]
    else:
        for i in range(n - 1, -1, -1):
            v = (v << 8) | p[i]
    return v


cdef class FrameReader:
    """Cuts ``header_length``-byte length headers and their payloads out of a byte stream.

    ``length_fmt`` is a struct format; ``>I``, ``!H``, ``<Q``, ``B`` and the like are read in C,
    anything else through ``payload_length(header)`` (a decoder's method). ``max_size`` (0 = no
    limit) bounds a payload: a longer one raises FrameTooLarge, a header ``payload_length``
    cannot read raises FrameError; either carries the frames complete before it, and the reader
    keeps nothing after it (the stream cannot be resynchronized).

    Example::

        >>> r = FrameReader(2, ">H")
        >>> r.feed(b"\\x00\\x01a\\x00"), r.feed(b"\\x01b")
        ([b'a'], [b'b'])
    """

    cdef bytearray _buffer
    cdef int _header_length
    cdef int _code
    cdef object _payload_length
    cdef Py_ssize_t _max_size
    cdef readonly unsigned long long frames

    def __init__(self, int header_length=4, length_fmt=">I", payload_length=None,
                 Py_ssize_t max_size=0):
        if header_length <= 0:
            raise ValueError(f"header_length must be positive, got {header_length}")
        self._buffer = bytearray()
        self._header_length = header_length
        self._payload_length = payload_length
        self._max_size = max_size
        self.frames = 0
        self._code = _length_code(length_fmt, header_length)
        if self._code == CALLBACK and payload_length is None:
            raise ValueError(f"length_fmt {length_fmt!r} needs a payload_length callable")

    @property
    def pending(self):
        """Bytes held back because they do not yet make a whole frame."""
        return len(self._buffer)

    def take_pending(self):
        """The bytes of the unfinished frame (at the end of a stream); the reader is emptied.

        Example::

            >>> r = FrameReader(4, ">I"); r.feed(b"\\x00\\x00"); r.take_pending()
            []
            b'\\x00\\x00'
        """
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    cdef Py_ssize_t _length_at(self, const unsigned char* p) except -1:
        cdef object n
        if self._code == BIG or self._code == LITTLE:
            n = _read_uint(p, self._header_length, self._code == BIG)
        else:
            try:
                n = self._payload_length(
                    PyBytes_FromStringAndSize(<const char*>p, self._header_length))
            except Exception as exc:
                raise FrameError(f"payload_length failed on a header: {exc!r}") from exc
            if not isinstance(n, int) or n < 0:
                raise FrameError(f"payload_length returned {n!r}, not a length")
        if n > PY_SSIZE_T_MAX or (self._max_size and n > self._max_size):
            raise FrameTooLarge(n, self._max_size)
        return n

    cpdef list feed(self, data):
        """Take the next bytes of the stream; return the payloads of every frame now complete."""
        cdef bytes chunk
        if self._buffer:
            self._buffer += data
            chunk = bytes(self._buffer)
            self._buffer.clear()
        elif type(data) is bytes:
            chunk = <bytes>data
        else:
            chunk = bytes(data)
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(chunk)
        cdef Py_ssize_t pos = 0, length
        cdef int h = self._header_length
        cdef list out = []
        try:
            while size - pos >= h:
                length = self._length_at(p + pos)
                if size - pos - h < length:
                    break
                out.append(PyBytes_FromStringAndSize(<const char*>(p + pos + h), length))
                pos += h + length
        except FrameError as err:
            err.frames = out
            err.header = chunk[pos:pos + h]
            self.frames += len(out)
            raise
        if pos < size:
            self._buffer += chunk[pos:]
        self.frames += len(out)
        return out


cdef inline void _write_uint(unsigned char* p, uint64_t v, int n, bint big) noexcept nogil:
    cdef int i
    for i in range(n):
        p[n - 1 - i if big else i] = v & 0xFF
        v >>= 8


def frame_all(payloads, int header_length=4, length_fmt=">I"):
    """Frame every payload with its length header, all into one bytes buffer: what a sink
    writes with one call. ``length_fmt`` is a big- or little-endian unsigned struct format of
    ``header_length`` bytes (``>I``, ``<H``, ``B``, ...).

    Example::

        >>> frame_all([b"hi", b"", b"abc"])
        b'\\x00\\x00\\x00\\x02hi\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x03abc'
        >>> frame_all([b"x"], 2, "<H")
        b'\\x01\\x00x'
    """
    cdef int code = _length_code(length_fmt, header_length)
    if code == CALLBACK:
        raise ValueError(f"frame_all writes big- or little-endian unsigned headers of "
                         f"{header_length} bytes; {length_fmt!r} is not one")
    cdef list parts = payloads if type(payloads) is list else list(payloads)
    cdef Py_ssize_t total = 0, n, offset = 0
    cdef uint64_t limit = (<uint64_t>1 << (8 * header_length)) - 1 if header_length < 8 else <uint64_t>-1
    for part in parts:
        if type(part) is not bytes:
            raise TypeError(f"frame_all frames bytes, not {type(part).__name__}")
        n = PyBytes_GET_SIZE(part)
        if <uint64_t>n > limit:
            raise ValueError(f"a payload of {n} bytes does not fit a {header_length}-byte header")
        total += header_length + n
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* buf = <unsigned char*>PyBytes_AS_STRING(out)
    for part in parts:
        n = PyBytes_GET_SIZE(part)
        _write_uint(buf + offset, <uint64_t>n, header_length, code == BIG)
        memcpy(buf + offset + header_length, PyBytes_AS_STRING(part), n)
        offset += header_length + n
    return out


cdef int _length_code(object fmt, int header_length) except -1:
    if not isinstance(fmt, str) or len(fmt) == 0:
        return CALLBACK
    cdef str order = "@"
    cdef str letter = fmt
    if fmt[0] in "<>!=@":
        order, letter = fmt[0], fmt[1:]
    sizes = {"B": 1, "H": 2, "I": 4, "L": 4, "Q": 8}
    if letter not in sizes or sizes[letter] != header_length:
        return CALLBACK
    if letter == "B" or order in ">!":
        return BIG
    if order == "<":
        return LITTLE
    return CALLBACK


cdef class LineReader:
    """Cuts a byte stream into text lines (UTF-8, newline and a trailing ``\\r`` removed).

    A line that is not valid UTF-8 goes to ``on_bad_line(raw_bytes, error)`` and is skipped
    (without a callback the UnicodeDecodeError is raised).

    Example::

        >>> r = LineReader()
        >>> r.feed(b"one\\ntw"), r.feed(b"o\\r\\n"), r.finish()
        (['one'], ['two'], [])
    """

    cdef bytearray _buffer
    cdef object _on_bad_line
    cdef readonly unsigned long long lines

    def __init__(self, on_bad_line=None):
        self._buffer = bytearray()
        self._on_bad_line = on_bad_line
        self.lines = 0

    @property
    def pending(self):
        """Bytes of a line not yet ended by a newline."""
        return len(self._buffer)

    cpdef list feed(self, data):
        """Take the next bytes; return every line now complete."""
        cdef bytes chunk = bytes(data)
        cdef Py_ssize_t cut = chunk.rfind(b"\n")
        if cut < 0:
            self._buffer += chunk
            return []
        cdef bytes head
        if self._buffer:
            self._buffer += chunk[:cut]
            head = bytes(self._buffer)
            self._buffer.clear()
        else:
            head = chunk[:cut]
        self._buffer += chunk[cut + 1:]
        return self._split(head)

    cpdef list finish(self):
        """End of stream: the last line if it had no newline."""
        if not self._buffer:
            return []
        cdef bytes rest = bytes(self._buffer)
        self._buffer.clear()
        return self._split(rest)

    cdef list _split(self, bytes block):
        cdef list out
        cdef Py_ssize_t i
        cdef str line
        try:
            out = block.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            out = self._split_each(block)
        if b"\r" in block:
            for i in range(len(out)):
                line = out[i]
                if line.endswith("\r"):
                    out[i] = line[:-1]
        self.lines += len(out)
        return out

    cdef list _split_each(self, bytes block):
        """The slow path for a block with invalid UTF-8: decode line by line, report bad ones."""
        cdef list out = []
        cdef bytes raw
        for raw in block.split(b"\n"):
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                if self._on_bad_line is None:
                    raise
                self._on_bad_line(raw, exc)
        return out
