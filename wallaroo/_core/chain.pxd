cimport cython
from libc.stdint cimport int64_t

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


@cython.final
cdef class Output:
    cdef Batch source
    cdef list values
    cdef list keys
    cdef list groups
    cdef list event_times
    cdef bint copy_keys
    cdef bint copy_times
    cdef inline int emit(self, object value, Py_ssize_t i) except -1
    cdef int emit_keyed(self, object value, object key, object group, Py_ssize_t i) except -1
    cdef int emit_timed(self, object value, Py_ssize_t i, int64_t event_time) except -1
    cdef int emit_new(self, object value, object key, object group, int64_t event_time) except -1
    cdef int emit_all(self, object results, Py_ssize_t i, str stage) except -1
    cdef Batch batch(self)


cdef class Op:
    cdef readonly str name
    cdef readonly object fn
    cdef readonly object errors
    cdef readonly unsigned long long processed
    cdef readonly str bad_input_kind
    cdef readonly bint sees_watermarks
    cdef int apply(self, object value, Py_ssize_t i, Output out) except -1
    cdef Batch run(self, Batch batch)


cdef class Chain:
    cdef readonly list ops
    cdef readonly list outputs
    cdef readonly list watermark_outputs
    cdef _run(self, Batch batch, Py_ssize_t start)
    cpdef push(self, Batch batch)
