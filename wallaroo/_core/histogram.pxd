from libc.stdint cimport int64_t, uint64_t


cdef class Histogram:
    cdef uint64_t counts[64]
    cdef readonly uint64_t count
    cdef readonly uint64_t total
    cdef readonly int64_t min
    cdef readonly int64_t max
    cdef clear(self)
    cpdef record(self, int64_t value)
    cpdef record_many(self, int64_t value, uint64_t times)
