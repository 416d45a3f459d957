"""Exceptions a user of wallaroo can see.

Example::

    >>> from wallaroo.errors import WallarooParameterError
    >>> raise WallarooParameterError("to_sink: expected a sink config, got 3")
    Traceback (most recent call last):
    ...
    wallaroo.errors.WallarooParameterError: to_sink: expected a sink config, got 3
"""


class WallarooParameterError(Exception):
    """An application was built or configured wrongly; the message names what and where.

    Example::

        >>> import wallaroo
        >>> wallaroo.source("s", wallaroo.IterSourceConfig("s", [1])).to(3)
        Traceback (most recent call last):
        ...
        wallaroo.errors.WallarooParameterError: ...
    """


class NotSupportedYet(WallarooParameterError):
    """A part of the API that exists but that this version of the engine cannot run yet.

    Example::

        >>> raise NotSupportedYet("Kafka sources are not supported yet")
        Traceback (most recent call last):
        ...
        wallaroo.errors.NotSupportedYet: Kafka sources are not supported yet
    """


class StageFailed(Exception):
    """A user function raised and the error policy is ``fail``: the run stops cleanly.

    ``stage`` names the stage, ``value`` is the input it failed on and the original exception is
    chained as ``__cause__``.

    Example::

        >>> err = StageFailed("double", 3, ValueError("boom"))
        >>> err.stage
        'double'
    """

    def __init__(self, stage: str, value, error: BaseException):
        self.stage = stage
        self.value = value
        self.error = error
        super().__init__(
            f"stage {stage!r} raised {type(error).__name__}: {error} "
            f"(input: {truncated_repr(value)})"
        )


def truncated_repr(value, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, for logs and error messages.

    Example::

        >>> truncated_repr("x" * 1000, limit=10)
        "'xxxxxxx…"
    """
    try:
        text = repr(value)
    except Exception as exc:  # a user __repr__ that raises must not hide the real error
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 2] + "…"


class RunStopped(Exception):
    """A run stopped because of something outside this process (another worker failed or went
    away); the message says what.

    Example::

        >>> str(RunStopped("worker w1 went away"))
        'worker w1 went away'
    """
