"""Helpers shared by the test suite (tests/ and tests/e2e/).

- :mod:`support.processes`: :class:`~support.processes.Proc`, the one wrapper for a child
  process (``wallaroo-run``, ``wallaroo send``, ``wallaroo receive``), the paths of the console
  scripts, the regexes for the lines they print at startup, and ``run_cli`` for runs that end
  by themselves.
- :mod:`support.net`: 127.0.0.1 only: free ports, u32-framed messages, and :class:`~support.net.Listener`,
  a TCP server standing in for a receiver.

tests/conftest.py puts the tests folder on ``sys.path`` (so ``import support`` works from
tests/ and tests/e2e/ alike) and offers fixtures built on these: ``processes``,
``wallaroo_run`` and ``listener``; everything they start is stopped in teardown.
"""
