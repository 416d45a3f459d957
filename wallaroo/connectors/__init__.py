"""Sources and sinks: TCP, files, stdout, generators, iterables, and in-memory collection."""
