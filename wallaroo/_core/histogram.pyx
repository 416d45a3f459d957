# cython: language_level=3
"""Latency histograms: power-of-two nanosecond bins, plus count, sum, min and max.

Bin 0 counts values of 0 ns; bin ``b`` (1..63) counts values in ``[2**(b-1), 2**b)``. Recording
is a few C operations (no locks: a histogram belongs to one worker's event loop); percentiles
interpolate linearly inside the bin that holds them and stay within ``[min, max]``, so an
estimate is never off by more than its bin's width. Histograms of the same quantity merge by
adding bins, which is how per-worker figures combine.

Example::

    >>> h = Histogram()
    >>> for v in (100, 200, 300, 4_000):
    ...     h.record(v)
    >>> h.count, h.min, h.max, h.bin_of(300)
    (4, 100, 4000, 9)
    >>> h.percentile(0.5) <= 300 < h.percentile(0.99)
    True
"""
cimport cython
from libc.stdint cimport int64_t, uint64_t, UINT64_MAX

cdef extern from *:
    """
    static inline int wallaroo_bit_length(unsigned long long v) {
        return v ? 64 - __builtin_clzll(v) : 0;
    }
    """
    int bit_length "wallaroo_bit_length"(unsigned long long v) nogil

#: How many bins a histogram has: bin 0 (zero) and one per power of two up to 2**63.
BINS = 64


cdef inline uint64_t add_saturating(uint64_t a, uint64_t b) noexcept nogil:
    return UINT64_MAX if a > UINT64_MAX - b else a + b


cdef inline uint64_t mul_saturating(uint64_t a, uint64_t b) noexcept nogil:
    return UINT64_MAX if b != 0 and a > UINT64_MAX // b else a * b


@cython.final
cdef class Histogram:
    """Counts of nanosecond values by power-of-two bin, with count, sum, min and max.

    Negative values (a clock that stepped back) count as 0. The sum is a 64-bit count of
    nanoseconds (584 years); it stays at its largest value rather than wrap.

    Example::

        >>> h = Histogram()
        >>> h.record_many(1_500, 10)
        >>> h.count, h.total, h.bins()[11]
        (10, 15000, 10)
    """

    def __cinit__(self):
        self.clear()

    cdef clear(self):
        cdef int i
        for i in range(BINS):
            self.counts[i] = 0
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    cpdef record(self, int64_t value):
        """Count one value."""
        self.record_many(value, 1)

    cpdef record_many(self, int64_t value, uint64_t times):
        """Count ``times`` values equal to ``value`` (a batch that shares one latency)."""
        if times == 0:
            return
        if value < 0:
            value = 0
        self.counts[bit_length(<unsigned long long>value)] += times
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += times
        self.total = add_saturating(self.total, mul_saturating(<uint64_t>value, times))

    @staticmethod
    def bin_of(int64_t value):
        """The bin ``value`` falls in."""
        return bit_length(<unsigned long long>value) if value > 0 else 0

    @staticmethod
    def bin_range(int b):
        """``(low, high)``: the values bin ``b`` counts are ``low <= v < high``.

        Example::

            >>> Histogram.bin_range(0), Histogram.bin_range(1), Histogram.bin_range(10)
            ((0, 1), (1, 2), (512, 1024))
        """
        if not 0 <= b < BINS:
            raise ValueError(f"bin {b} does not exist; bins are 0..{BINS - 1}")
        cdef object one = 1  # Python ints: 2**63 does not fit an int64
        return (0, 1) if b == 0 else (one << (b - 1), one << b)

    def bins(self):
        """The 64 bin counts, as a list."""
        return [self.counts[i] for i in range(BINS)]

    def percentile(self, double q):
        """The value below which a share ``q`` (0..1) of the counted values lie (an estimate
        within one bin; 0 when nothing was counted).

        Example::

            >>> h = Histogram()
            >>> for v in range(1, 1001):
            ...     h.record(v)
            >>> 400 <= h.percentile(0.5) <= 600, h.percentile(1.0)
            (True, 1000)
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"percentile takes a share between 0 and 1, not {q}")
        if self.count == 0:
            return 0
        cdef double rank = q * self.count
        cdef double seen = 0, low, high, estimate
        cdef int b
        for b in range(BINS):
            if self.counts[b] == 0:
                continue
            if seen + self.counts[b] >= rank:
                low, high = self.bin_range(b)
                estimate = low + (high - low) * (rank - seen) / self.counts[b]
                return int(min(max(estimate, <double>self.min), <double>self.max))
            seen += self.counts[b]
        return self.max

    def mean(self):
        """The mean of the counted values (0.0 when nothing was counted)."""
        return <double>self.total / self.count if self.count else 0.0

    def merge(self, Histogram other):
        """Add ``other``'s counts to this histogram.

        Example::

            >>> a, b = Histogram(), Histogram()
            >>> a.record(10); b.record(1_000)
            >>> a.merge(b)
            >>> a.count, a.min, a.max
            (2, 10, 1000)
        """
        cdef int i
        if other.count == 0:
            return
        for i in range(BINS):
            self.counts[i] += other.counts[i]
        if self.count == 0 or other.min < self.min:
            self.min = other.min
        if other.max > self.max:
            self.max = other.max
        self.count += other.count
        self.total = add_saturating(self.total, other.total)

    def reset(self):
        """Forget everything counted."""
        self.clear()

    def to_dict(self):
        """Plain data (JSON-ready): count, sum, min, max and the non-empty bins by index.

        Example::

            >>> h = Histogram(); h.record(3)
            >>> h.to_dict()
            {'count': 1, 'sum': 3, 'min': 3, 'max': 3, 'bins': {'2': 1}}
        """
        return {"count": self.count, "sum": self.total, "min": self.min, "max": self.max,
                "bins": {str(i): self.counts[i] for i in range(BINS) if self.counts[i]}}

    @staticmethod
    def from_dict(data):
        """The histogram ``to_dict`` described.

        Example::

            >>> h = Histogram(); h.record_many(700, 3)
            >>> Histogram.from_dict(h.to_dict()).to_dict() == h.to_dict()
            True
        """
        cdef Histogram h = Histogram()
        for index, n in data["bins"].items():
            b = int(index)
            if not 0 <= b < BINS or n < 0:
                raise ValueError(f"histogram data has a bad bin: {index!r}: {n!r}")
            h.counts[b] = n
        h.count = data["count"]
        h.total = data["sum"]
        h.min = data["min"]
        h.max = data["max"]
        if sum(h.bins()) != h.count:
            raise ValueError("histogram data is inconsistent: its bins do not add up to count")
        return h

    def summary(self):
        """Count, min, max and the usual percentiles, in nanoseconds.

        Example::

            >>> h = Histogram(); h.record(5)
            >>> sorted(h.summary())
            ['count', 'max', 'mean', 'min', 'p50', 'p95', 'p99', 'p99.9', 'p99.99']
        """
        return {"count": self.count, "min": self.min, "max": self.max, "mean": self.mean(),
                "p50": self.percentile(0.5), "p95": self.percentile(0.95),
                "p99": self.percentile(0.99), "p99.9": self.percentile(0.999),
                "p99.99": self.percentile(0.9999)}

    def shares(self):
        """``[(upper edge in ns, share of the values)]`` for every bin from the lowest to the
        highest one that holds a value (empty bins between them included, with share 0): the
        latency distribution a chart draws.

        Example::

            >>> h = Histogram(); h.record_many(3, 3); h.record(10)
            >>> h.shares()
            [(4, 0.75), (8, 0.0), (16, 0.25)]
        """
        if self.count == 0:
            return []
        cdef int b, first = -1, last = -1
        for b in range(BINS):
            if self.counts[b]:
                if first < 0:
                    first = b
                last = b
        return [(self.bin_range(b)[1], self.counts[b] / <double>self.count)
                for b in range(first, last + 1)]

    def difference(self, Histogram earlier):
        """What was counted since ``earlier`` (an older copy of this histogram): the bins'
        differences. Min and max cannot be taken apart: they are this histogram's, kept
        within the bins that hold the difference.

        Example::

            >>> old = Histogram(); old.record(10)
            >>> new = Histogram.from_dict(old.to_dict()); new.record(1_000)
            >>> new.difference(old).count, new.difference(old).bins()[10]
            (1, 1)
        """
        cdef Histogram h = Histogram()
        cdef int i
        if earlier.count > self.count:
            raise ValueError("the earlier histogram holds more values than this one")
        for i in range(BINS):
            if earlier.counts[i] > self.counts[i]:
                raise ValueError(f"the earlier histogram is not an older copy: bin {i} holds more")
            h.counts[i] = self.counts[i] - earlier.counts[i]
        h.count = self.count - earlier.count
        h.total = self.total - earlier.total if self.total > earlier.total else 0
        cdef int first = -1, last = -1
        for i in range(BINS):
            if h.counts[i]:
                if first < 0:
                    first = i
                last = i
        if h.count:
            h.min = max(self.min, <int64_t>(self.bin_range(first)[0]))
            h.max = min(self.max, <int64_t>(self.bin_range(last)[1] - 1))
        return h
