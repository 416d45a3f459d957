"""Run an application in-process on given inputs and get what each sink received.

The run uses the same worker, plan and chains as ``wallaroo-run``; only the sources named in
``inputs`` are replaced by their values, and every sink by an in-memory one that keeps the values
before encoding.

Example::

    >>> import wallaroo, wallaroo.testing
    >>> upper = wallaroo.computation(name="upper")(str.upper)
    >>> p = (wallaroo.source("words", wallaroo.TCPSourceConfig("words", "127.0.0.1", 0,
    ...                                                        wallaroo.decoder(bytes.decode)))
    ...      .to(upper).to_sink(wallaroo.TCPSinkConfig("127.0.0.1", 7002, wallaroo.encoder(str))))
    >>> wallaroo.testing.run(wallaroo.build_application("up", p), {"words": ["a", "b"]})
    [['A', 'B']]
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterable

from wallaroo.api.configs import IterSourceConfig, SinkConfig
from wallaroo.api.pipeline import Application
from wallaroo.errors import WallarooParameterError
from wallaroo.runtime.worker import RunOptions, Worker


class _MemorySinkConfig(SinkConfig):
    kind = "memory"

    def describe(self) -> str:
        return "memory"


def _application(app: Any, args: list[str] | None) -> Application:
    if isinstance(app, Application):
        return app
    setup = getattr(app, "application_setup", app)
    if not callable(setup):
        raise WallarooParameterError(
            f"wallaroo.testing.run: expected an application, a module with application_setup, "
            f"or application_setup itself; got {app!r}"
        )
    built = setup(list(args or []))
    if not isinstance(built, Application):
        raise WallarooParameterError(
            f"wallaroo.testing.run: application_setup returned {type(built).__name__}, not "
            f"wallaroo.build_application(...)"
        )
    return built


def run(app: Any, inputs: dict[str, Iterable], timeout: float = 30.0, args: list[str] | None = None,
        on_error: str = "fail") -> list[list]:
    """Run ``app`` on ``inputs`` (source name → decoded values); one list of values per sink.

    ``app`` is what ``build_application`` returned, a module with ``application_setup``, or
    ``application_setup`` itself (called with ``args``). Sources not in ``inputs`` run as
    configured and must be bounded. Raises ``wallaroo.errors.StageFailed`` if a stage fails
    (with ``on_error="fail"``), TimeoutError if the run takes longer than ``timeout`` seconds.

    Example::

        >>> import wallaroo
        >>> p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", range(3)))
        ...      .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
        >>> run(wallaroo.build_application("same", p), {"n": [7, 8]})
        [[7, 8]]
    """
    application = _application(app, args)
    graph = application.graph
    names = [n.name for n in graph.sources]
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise WallarooParameterError(
            f"wallaroo.testing.run: inputs name {', '.join(map(repr, unknown))}, but the "
            f"application's sources are {', '.join(map(repr, names))}"
        )
    sources = {name: IterSourceConfig(name, values) for name, values in inputs.items()}
    sinks = {i: _MemorySinkConfig() for i in range(len(graph.sinks))}
    worker = Worker(application, RunOptions(on_error=on_error), sources, sinks)
    for ctx, source in zip(worker.source_contexts, worker.sources):
        if not source.bounded:
            raise WallarooParameterError(
                f"wallaroo.testing.run: source {ctx.name!r} never ends by itself; give its values "
                f"in inputs, e.g. inputs={{{ctx.name!r}: [...]}}"
            )
    result = _run_to_end(worker, timeout)
    if result.failure is not None:
        raise result.failure
    return [sink.values for sink in worker.sinks]


def _run_to_end(worker: Worker, timeout: float):
    async def bounded():
        task = asyncio.ensure_future(worker.run())
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            worker.request_stop()
            await task
            raise TimeoutError(f"wallaroo.testing.run: the run did not end within {timeout} s; "
                               f"are all its sources bounded?")
        return task.result()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    # Called from inside a running loop (a notebook): run on a thread with a loop of its own.
    box: dict = {}

    def target():
        try:
            box["result"] = asyncio.run(bounded())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="wallaroo-testing")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
