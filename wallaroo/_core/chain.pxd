cimport cython
from libc.stdint cimport int64_t
from wallaroo._core.histogram cimport Histogram

# Watermarks and event times are integer nanoseconds since the epoch. Event times must lie in
# (-EVENT_TIME_LIMIT, EVENT_TIME_LIMIT) and window lengths below DURATION_LIMIT, so that sums of
# the two never overflow; END_OF_INPUT is the watermark of an input that has ended, NO_WATERMARK
# marks a batch that carries none (and an input not heard from yet).
cdef extern from *:
    """
    #include <stdint.h>
    #define WALLAROO_EVENT_TIME_LIMIT (((int64_t)1) << 62)
    #define WALLAROO_DURATION_LIMIT (((int64_t)1) << 60)
    #define WALLAROO_END_OF_INPUT (((int64_t)1) << 62)
    #define WALLAROO_NO_WATERMARK (-(((int64_t)1) << 62) - 1)
    """
    const int64_t EVENT_TIME_LIMIT "WALLAROO_EVENT_TIME_LIMIT"
    const int64_t DURATION_LIMIT "WALLAROO_DURATION_LIMIT"
    const int64_t END_OF_INPUT "WALLAROO_END_OF_INPUT"
    const int64_t NO_WATERMARK "WALLAROO_NO_WATERMARK"

# What an op does to the keys and event times of what passes through it.
cdef enum Effect:
    KEEP = 0        # passes on what it got
    NEW = 1         # sets one per message (key_by; an event-time extractor; a window)
    CONSTANT = 2    # sets one key for all (collect)
    DROP = 3        # its outputs need none (decoded or encoded bytes)


cdef class Batch:
    cdef public list values
    cdef public list keys
    cdef public list groups
    cdef public object key
    cdef public Py_ssize_t group
    cdef public int64_t ingest_ns
    cdef public list event_times
    cdef public object origin
    cdef public int64_t watermark


cdef class Op:
    cdef readonly str name
    cdef readonly object fn
    cdef readonly object errors
    cdef readonly unsigned long long processed
    cdef readonly Histogram latency
    cdef unsigned int countdown
    cdef readonly str bad_input_kind
    cdef readonly bint sees_watermarks
    cdef Effect keys_effect
    cdef Effect times_effect
    cdef Op next
    cdef object solo
    cdef int push(self, object value, object key, object group, int64_t t) except -1
    cdef int consume(self, Batch batch) except -1
    cdef bint time_passes(self, int64_t now) except -1
    cdef int finish_batch(self, Batch out) except -1
    cdef int caught(self, object value) except -1
    cdef int failed(self, object value, object exc) except -1
    cdef bint sampled(self)
    cdef int timed(self, int64_t started) except -1


cdef int64_t monotonic_ns() noexcept nogil


@cython.final
cdef class Collector(Op):
    cdef list values
    cdef list keys
    cdef list groups
    cdef list times
    cdef bint track_keys
    cdef bint track_times
    cdef begin(self, bint track_keys, bint track_times)


cdef class EncodeOp(Op):
    cdef bytes to_bytes(self, object result)


cdef class Chain:
    cdef readonly list ops
    cdef readonly list outputs
    cdef readonly list watermark_outputs
    cdef Op head
    cdef Collector collector
    cdef Effect keys_effect
    cdef Effect times_effect
    cdef object constant_key
    cdef Py_ssize_t constant_group
    cpdef Batch run(self, Batch batch)
    cpdef push(self, Batch batch)
    cdef Batch finish(self, Batch source)
    cdef forward(self, Batch out)
