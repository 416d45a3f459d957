"""Command-line tools that feed and read a running engine: ``wallaroo send`` and ``wallaroo receive``."""
