from libc.stdint cimport uint64_t

cdef uint64_t hash_key(object key) except? 0
cpdef object normalize_key(object key)
cpdef Py_ssize_t key_group(object key, Py_ssize_t groups) except -1
