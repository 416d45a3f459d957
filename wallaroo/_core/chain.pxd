cimport cython
from libc.stdint cimport int64_t


cdef class Batch:
    cdef public list values
    cdef public list keys
    cdef public list groups
    cdef public object key
    cdef public Py_ssize_t group
    cdef public int64_t ingest_ns


@cython.final
cdef class Output:
    cdef Batch source
    cdef list values
    cdef list keys
    cdef list groups
    cdef inline int emit(self, object value, Py_ssize_t i) except -1
    cdef int emit_all(self, object results, Py_ssize_t i, str stage) except -1
    cdef Batch batch(self)


cdef class Op:
    cdef readonly str name
    cdef readonly object fn
    cdef readonly object errors
    cdef readonly unsigned long long processed
    cdef readonly str bad_input_kind
    cdef int apply(self, object value, Py_ssize_t i, Output out) except -1
    cdef Batch run(self, Batch batch)


cdef class Chain:
    cdef readonly list ops
    cdef readonly list outputs
    cpdef push(self, Batch batch)
