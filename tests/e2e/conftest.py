"""Fixtures for the end-to-end tests of the example applications."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import EXAMPLES, Harness  # noqa: E402


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


def load_example(example: str, module: str):
    """Import ``examples/<example>/<module>.py`` under a unique name.

    Each is registered in sys.modules as ``example_<example>_<module>`` (pickle finds its
    classes there); the example's folder goes on sys.path for the modules it imports itself.
    """
    name = f"example_{example}_{module}"
    if name in sys.modules:
        return sys.modules[name]
    folder = str(EXAMPLES / example)
    if folder not in sys.path:
        sys.path.append(folder)
    path = EXAMPLES / example / f"{module}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


@pytest.fixture(scope="session")
def example():
    return load_example
