"""What happens when user code or input goes wrong.

Bad input (a frame over the size limit, a truncated frame, a decoder or key extractor that
raises) never stops the engine: the message is counted, logged once per stage and kind, and
written to the dead-letter file when one is set. A computation or encoder that raises follows the
policy: ``fail`` (default: stop cleanly, report stage and input), ``skip`` or ``dead-letter``.

Example::

    >>> policy = ErrorPolicy("skip")
    >>> policy.user_error("double", 3, ValueError("boom"))
    True
    >>> policy.counts
    {('double', 'error'): 1}
"""
from __future__ import annotations

import base64
import json
import logging
import os
import time
import traceback
from typing import Callable

from wallaroo.errors import StageFailed, truncated_repr

log = logging.getLogger("wallaroo")

POLICIES = ("fail", "skip", "dead-letter")


class ErrorPolicy:
    """Counts, logs and routes failures of stages; decides whether a run goes on.

    ``on_failure(StageFailed)`` is called once when a ``fail`` policy stops the run.

    Example::

        >>> ErrorPolicy("fail").user_error("f", 1, KeyError("k"))
        False
    """

    def __init__(self, mode: str = "fail", dead_letter_path: str | None = None,
                 on_failure: Callable[[StageFailed], None] | None = None):
        if mode not in POLICIES:
            raise ValueError(f"--on-error must be one of {', '.join(POLICIES)}; got {mode!r}")
        if mode == "dead-letter" and not dead_letter_path:
            dead_letter_path = "wallaroo-dead-letter.jsonl"
        self.mode = mode
        self.dead_letter_path = dead_letter_path
        self.on_failure = on_failure
        self.counts: dict[tuple[str, str], int] = {}
        self.failure: StageFailed | None = None
        self._dead_letter = None

    def user_error(self, stage: str, value, exc: BaseException) -> bool:
        """A computation, state computation or encoder raised: True to go on, False to stop."""
        if self.mode == "fail":
            if self.failure is None:
                self.failure = StageFailed(stage, value, exc)
                self.failure.__cause__ = exc
                self.failure.traceback_text = "".join(
                    traceback.format_exception(type(exc), exc, exc.__traceback__))
                if self.on_failure is not None:
                    self.on_failure(self.failure)
            return False
        self._record(stage, "error", value, exc)
        return True

    def bad_input(self, stage: str, kind: str, value, exc: BaseException) -> None:
        """Input a stage could not take (frames, decoders, key extractors): count and go on."""
        self._record(stage, kind, value, exc)

    def _record(self, stage: str, kind: str, value, exc: BaseException) -> None:
        key = (stage, kind)
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + 1
        if seen == 0:
            where = f"; see {self.dead_letter_path}" if self.dead_letter_path else ""
            what = " raised" if kind == "error" else f": {_label(kind)} failed with"
            log.warning("stage %r%s %s: %s (input: %s); the input was skipped, and further "
                        "failures of this kind are counted, not logged%s", stage, what,
                        type(exc).__name__, exc, truncated_repr(value), where)
        if self.dead_letter_path:
            self._write_dead_letter(stage, kind, value, exc)

    def _write_dead_letter(self, stage: str, kind: str, value, exc: BaseException) -> None:
        if self._dead_letter is None:
            self._dead_letter = open(self.dead_letter_path, "a", encoding="utf-8")
        record = {"time_ns": time.time_ns(), "stage": stage, "kind": kind,
                  "error": f"{type(exc).__name__}: {exc}", "input": truncated_repr(value, 10_000)}
        if isinstance(value, (bytes, bytearray)):
            record["input_base64"] = base64.b64encode(bytes(value)).decode("ascii")
        self._dead_letter.write(json.dumps(record) + "\n")
        self._dead_letter.flush()

    def summary(self) -> list[str]:
        """One line per (stage, kind) that had failures."""
        return [f"stage {stage!r}: {n} {_label(kind)} failure(s), input skipped"
                for (stage, kind), n in sorted(self.counts.items())]

    def close(self) -> None:
        """Flush and fsync the dead-letter file."""
        if self._dead_letter is not None:
            self._dead_letter.flush()
            os.fsync(self._dead_letter.fileno())
            self._dead_letter.close()
            self._dead_letter = None


def _label(kind: str) -> str:
    return kind.replace("_", " ")
