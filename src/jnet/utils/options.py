"""Option look-up: one check of a named choice, one message, one did-you-mean rule.

Every "unknown value" error names the field, the value, the valid choices and, when one is close,
the nearest one: ``model.head: unknown value 'papr'; expected one of paper, chain; did you mean
'paper'?``.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, TypeVar

from jnet.errors import ConfigError

T = TypeVar("T")


def closest(name: Any, valid: Iterable[Any]) -> str | None:
    """The valid name nearest to ``name``: a close spelling (difflib ratio >= 0.6), else one that
    contains it or is contained in it, else a looser spelling (ratio >= 0.4); None if none is."""
    name, valid = str(name), [str(v) for v in valid]
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    close = close or [v for v in valid if name and (name in v or v in name)]
    close = close or difflib.get_close_matches(name, valid, n=1, cutoff=0.4)
    return close[0] if close else None


def did_you_mean(name: Any, valid: Iterable[Any]) -> str:
    """``"; did you mean 'x'?"`` for the :func:`closest` name, or ``""``."""
    near = closest(name, valid)
    return f"; did you mean {near!r}?" if near is not None else ""


def unknown(field: str, value: Any, valid: Iterable[Any], what: str = "value") -> str:
    """The message for a value that is not one of ``valid``."""
    valid = list(valid)
    return (f"{field}: unknown {what} {value!r}; expected one of {', '.join(map(str, valid))}"
            f"{did_you_mean(value, valid)}")


def choose(value: T, valid: Iterable[Any], field: str, what: str = "value") -> T:
    """Return ``value`` if it is one of ``valid`` (a tuple, list or the keys of a registry dict).

    Raises:
        ConfigError: the :func:`unknown` message, naming ``field``.
    """
    valid = list(valid)
    if value not in valid:
        raise ConfigError(unknown(field, value, valid, what))
    return value
