"""Aggregations the window tests share: collect values in a list, or sum them."""
from __future__ import annotations

import wallaroo


class Collect(wallaroo.Aggregation):
    """Keeps a window's values in a list, in the order they reach the accumulator."""

    def initial_accumulator(self):
        return []

    def update(self, data, acc):
        acc.append(data)

    def combine(self, acc1, acc2):
        return acc1 + acc2

    def output(self, key, acc):
        return list(acc)


class CollectWindow(Collect):
    """Like Collect, with the key and the window bounds: ``(key, (start, end), values)``."""

    def output(self, key, acc, window):
        return (key, tuple(window), list(acc))


class Total(wallaroo.Aggregation):
    """The sum of a window's values: ``(key, total)``."""

    def initial_accumulator(self):
        return [0]

    def update(self, data, acc):
        acc[0] += data

    def combine(self, acc1, acc2):
        return [acc1[0] + acc2[0]]

    def output(self, key, acc):
        return (key, acc[0])
