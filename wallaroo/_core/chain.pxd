from libc.stdint cimport int64_t


cdef class Batch:
    cdef public list values
    cdef public list keys
    cdef public list groups
    cdef public object key
    cdef public Py_ssize_t group
    cdef public int64_t ingest_ns


cdef class Op:
    cdef readonly str name
    cdef readonly object errors
    cdef readonly unsigned long long processed
    cdef Batch run(self, Batch batch)


cdef class Chain:
    cdef readonly list ops
    cdef readonly list outputs
    cpdef push(self, Batch batch)
