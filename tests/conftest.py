"""Fixtures for the whole suite (tests/ and tests/e2e/); the helpers are in tests/support/."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# ``import support`` from any test module or conftest, whichever folder pytest was pointed at
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from support.net import Listener  # noqa: E402
from support.processes import WALLAROO_RUN, Proc, app_env  # noqa: E402


@pytest.fixture
def processes():
    """``processes(argv, **kwargs)`` starts a :class:`~support.processes.Proc` (same
    arguments); each is killed, with its process group, in teardown."""
    started: list[Proc] = []

    def start(argv, **kwargs) -> Proc:
        started.append(Proc(argv, **kwargs))
        return started[-1]

    yield start
    for proc in reversed(started):
        proc.kill()


@pytest.fixture
def wallaroo_run(processes, tmp_path):
    """``wallaroo_run(*args, cwd=None, env=None)`` starts ``wallaroo-run ARGS`` in ``cwd``
    (default: tmp_path) with ``env`` (default: ``app_env()``, tests/apps on PYTHONPATH);
    waits default to 5 s."""
    def start(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Proc:
        return processes([WALLAROO_RUN, *args], name="wallaroo-run", cwd=cwd or tmp_path,
                         env=env or app_env(), timeout=5.0)

    return start


@pytest.fixture
def listener():
    """``listener(port=0)`` starts a :class:`~support.net.Listener`; each is closed in teardown."""
    servers: list[Listener] = []

    def make(port: int = 0) -> Listener:
        servers.append(Listener(port))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
