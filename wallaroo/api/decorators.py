"""Decorators that turn plain functions into pipeline stages (the Wallaroo 0.6 API).

Each decorator returns an object with the methods the original API generated (``compute``,
``compute_multi``, ``extract_key``, ``decode``, ``encode``, ...). Those methods are the user's
function itself, so the engine calls it with no extra layer. The objects pickle by reference to
the module attribute they were bound to, so they cross processes and go into checkpoints.

Example::

    >>> import wallaroo
    >>> @wallaroo.computation(name="double")
    ... def double(x):
    ...     return x * 2
    >>> double.name(), double.compute(21)
    ('double', 42)
"""
from __future__ import annotations

import importlib
import inspect
import struct
from typing import Any, Callable

from wallaroo.errors import WallarooParameterError


def _check_arity(func: Callable, arity: int, decorator: str) -> None:
    """Raise WallarooParameterError unless ``func`` accepts exactly ``arity`` positional args."""
    if not callable(func):
        raise WallarooParameterError(
            f"@{decorator} decorates a function; got {type(func).__name__} {func!r}"
        )
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: trust the user
        return
    try:
        signature.bind(*([None] * arity))
    except TypeError:
        wanted = {1: "one argument (data)", 2: "two arguments (data, state)"}[arity]
        raise WallarooParameterError(
            f"@{decorator}: function {getattr(func, '__qualname__', func)!r} must take {wanted}; "
            f"its signature is {signature}"
        ) from None


def _lookup(module: str, qualname: str) -> Any:
    """Find ``module.qualname``: how decorated objects are unpickled."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class UserFunction:
    """Base of every decorated stage: keeps the function, its name, and pickles by reference.

    Calling the object with no arguments returns it (as in the original API, so both
    ``.to(f)`` and ``.to(f())`` work); calling it with arguments calls the function.

    Example::

        >>> import wallaroo
        >>> @wallaroo.computation
        ... def inc(x):
        ...     return x + 1
        >>> inc(1), inc() is inc
        (2, True)
    """

    decorator_name = "computation"
    arity = 1

    def __init__(self, func: Callable, name: str | None = None):
        _check_arity(func, self.arity, self.decorator_name)
        self._func = func
        self._name = str(name) if name is not None else getattr(func, "__name__", "stage")
        self._module = getattr(func, "__module__", None)
        self._qualname = getattr(func, "__qualname__", None)

    def name(self) -> str:
        """The stage name, used in logs, errors and metrics."""
        return self._name

    def __call__(self, *args):
        if not args:
            return self
        return self._func(*args)

    def __repr__(self) -> str:
        return f"<{self.decorator_name} {self._name!r}>"

    def _rebuild_args(self) -> tuple:
        return (self._func, self._name)

    def __reduce__(self):
        if self._module and self._qualname and "<locals>" not in self._qualname:
            try:
                if _lookup(self._module, self._qualname) is self:
                    return (_lookup, (self._module, self._qualname))
            except (ImportError, AttributeError):
                pass
        return (type(self), self._rebuild_args())


class Computation(UserFunction):
    """A stateless stage: ``compute(data)`` returns the output, or None to drop the message.

    Example::

        >>> c = Computation(str.upper, name="upper")
        >>> c.compute("a")
        'A'
    """

    def __init__(self, func: Callable, name: str | None = None):
        super().__init__(func, name)
        self.compute = func


class ComputationMulti(UserFunction):
    """A stateless stage emitting many outputs: ``compute_multi(data)`` returns a list or None.

    Example::

        >>> c = ComputationMulti(str.split, name="split")
        >>> c.compute_multi("a b")
        ['a', 'b']
    """

    decorator_name = "computation_multi"

    def __init__(self, func: Callable, name: str | None = None):
        super().__init__(func, name)
        self.compute_multi = func


def _check_state_class(state: Any, func: Callable, decorator: str) -> None:
    if state is None or not callable(state):
        raise WallarooParameterError(
            f"@{decorator} for {getattr(func, '__qualname__', func)!r} needs state=<a class>, "
            f"e.g. @wallaroo.{decorator}(name='count', state=Counter); got state={state!r}"
        )
    try:
        inspect.signature(state).bind()
    except TypeError:
        raise WallarooParameterError(
            f"@{decorator} for {getattr(func, '__qualname__', func)!r}: the state class "
            f"{getattr(state, '__qualname__', state)!r} must be callable with no arguments "
            f"(one is made per key with state())"
        ) from None
    except ValueError:
        pass


class StateComputation(UserFunction):
    """A stage with per-key state: ``compute(data, state)`` mutates ``state`` and returns output.

    ``initial_state()`` makes a fresh state object by calling the state class with no arguments.

    Example::

        >>> class Count:
        ...     def __init__(self): self.n = 0
        >>> def bump(data, state):
        ...     state.n += 1
        ...     return state.n
        >>> s = StateComputation(bump, name="bump", state=Count)
        >>> st = s.initial_state(); s.compute("x", st), s.compute("x", st)
        (1, 2)
    """

    decorator_name = "state_computation"
    arity = 2

    def __init__(self, func: Callable, name: str | None = None, state: Any = None):
        _check_state_class(state, func, self.decorator_name)
        super().__init__(func, name)
        self._state_class = state
        self.initial_state = state
        self.compute = func

    def _rebuild_args(self) -> tuple:
        return (self._func, self._name, self._state_class)


class StateComputationMulti(StateComputation):
    """Like StateComputation, but ``compute_multi(data, state)`` returns a list or None.

    Example::

        >>> s = StateComputationMulti(lambda d, st: [d, d], name="twice", state=dict)
        >>> s.compute_multi(1, s.initial_state())
        [1, 1]
    """

    decorator_name = "state_computation_multi"

    def __init__(self, func: Callable, name: str | None = None, state: Any = None):
        super().__init__(func, name, state)
        del self.compute
        self.compute_multi = func


class KeyExtractor(UserFunction):
    """Picks the partition key of a message: ``extract_key(data)`` returns str, bytes or int.

    Example::

        >>> k = KeyExtractor(lambda d: d[0], name="first")
        >>> k.extract_key("abc")
        'a'
    """

    decorator_name = "key_extractor"

    def __init__(self, func: Callable, name: str | None = None):
        super().__init__(func, name)
        self.extract_key = func


class Decoder(UserFunction):
    """Turns one framed payload into a value: ``decode(payload)``; None drops the message.

    A frame is ``header_length`` bytes holding the payload length in ``length_fmt`` (a struct
    format, big-endian u32 by default), then the payload.

    Example::

        >>> d = Decoder(lambda b: b.decode(), name="text")
        >>> d.header_length(), d.payload_length(b"\\x00\\x00\\x00\\x05"), d.decode(b"hello")
        (4, 5, 'hello')
    """

    decorator_name = "decoder"

    def __init__(self, func: Callable, name: str | None = None, header_length: int = 4,
                 length_fmt: str = ">I"):
        super().__init__(func, name)
        try:
            size = struct.calcsize(length_fmt)
        except (struct.error, TypeError):
            raise WallarooParameterError(
                f"@decoder for {self._name!r}: length_fmt={length_fmt!r} is not a struct format "
                f"(use e.g. '>I' for a big-endian u32)"
            ) from None
        if size != header_length:
            raise WallarooParameterError(
                f"@decoder for {self._name!r}: header_length={header_length} but "
                f"length_fmt={length_fmt!r} is {size} bytes long; make them agree"
            )
        self._header_length = header_length
        self.length_fmt = length_fmt
        self._length_struct = struct.Struct(length_fmt)
        self.decode = func

    def header_length(self) -> int:
        """How many bytes of each frame hold the payload length."""
        return self._header_length

    def payload_length(self, header: bytes) -> int:
        """The payload length stored in a frame header."""
        return self._length_struct.unpack(header)[0]

    def _rebuild_args(self) -> tuple:
        return (self._func, self._name, self._header_length, self.length_fmt)


class Encoder(UserFunction):
    """Turns an output value into bytes for a sink: ``encode(data)`` returns bytes, str or None.

    Example::

        >>> e = Encoder(lambda d: f"{d}\\n", name="line")
        >>> e.encode(3)
        '3\\n'
    """

    decorator_name = "encoder"

    def __init__(self, func: Callable, name: str | None = None):
        super().__init__(func, name)
        self.encode = func


def _make_decorator(cls: type, doc: str):
    """Build a decorator usable as ``@d``, ``@d(name)``, ``@d(name=..., **options)``."""

    def decorator(*args, **options):
        if len(args) == 1 and callable(args[0]) and not isinstance(args[0], str) and not options:
            return cls(args[0])
        if len(args) > 1:
            raise WallarooParameterError(
                f"@{cls.decorator_name} takes at most one positional argument (the name); "
                f"got {args!r}"
            )
        if args:
            options.setdefault("name", args[0])

        def wrap(func: Callable):
            try:
                return cls(func, **options)
            except TypeError as exc:
                raise WallarooParameterError(f"@{cls.decorator_name}: {exc}") from None

        return wrap

    decorator.__name__ = cls.decorator_name
    decorator.__qualname__ = cls.decorator_name
    decorator.__doc__ = doc
    return decorator


computation = _make_decorator(Computation, """Decorate ``f(data) -> output | None`` as a stateless stage.

    Example::

        >>> import wallaroo
        >>> @wallaroo.computation(name="reverse")
        ... def reverse(data):
        ...     return data[::-1]
        >>> reverse.compute("abc")
        'cba'
    """)
computation_multi = _make_decorator(ComputationMulti, """Decorate ``f(data) -> list | None``: each item is emitted.

    Example::

        >>> import wallaroo
        >>> @wallaroo.computation_multi(name="split")
        ... def split(data):
        ...     return data.split()
        >>> split.compute_multi("a b")
        ['a', 'b']
    """)
state_computation = _make_decorator(StateComputation, """Decorate ``f(data, state) -> output | None``; one state per key.

    Example::

        >>> import wallaroo
        >>> class Total:
        ...     def __init__(self): self.n = 0
        >>> @wallaroo.state_computation(name="total", state=Total)
        ... def add(data, state):
        ...     state.n += data
        ...     return state.n
        >>> add.compute(5, add.initial_state())
        5
    """)
state_computation_multi = _make_decorator(StateComputationMulti, """Decorate ``f(data, state) -> list | None``; one state per key.

    Example::

        >>> import wallaroo
        >>> @wallaroo.state_computation_multi(name="echo", state=list)
        ... def echo(data, seen):
        ...     seen.append(data)
        ...     return list(seen)
        >>> echo.compute_multi(1, echo.initial_state())
        [1]
    """)
key_extractor = _make_decorator(KeyExtractor, """Decorate ``f(data) -> key`` (str, bytes or int).

    Example::

        >>> import wallaroo
        >>> @wallaroo.key_extractor
        ... def first_letter(word):
        ...     return word[0]
        >>> first_letter.extract_key("wallaroo")
        'w'
    """)
encoder = _make_decorator(Encoder, """Decorate ``f(data) -> bytes | str | None`` as a sink encoder.

    Example::

        >>> import wallaroo
        >>> @wallaroo.encoder
        ... def line(data):
        ...     return f"{data}\\n"
        >>> line.encode("hi")
        'hi\\n'
    """)
decoder = _make_decorator(Decoder, """Decorate ``f(payload: bytes) -> value | None`` as a source decoder.

    Options: ``header_length`` (default 4) and ``length_fmt`` (default ``">I"``).

    Example::

        >>> import wallaroo
        >>> @wallaroo.decoder(header_length=4, length_fmt=">I")
        ... def text(payload):
        ...     return payload.decode()
        >>> text.decode(b"hi"), text.header_length()
        ('hi', 4)
    """)
