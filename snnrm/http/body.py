"""Untrusted JSON request bodies: bounded in size and nesting, numbers finite, errors that name the problem.

``json.loads`` recurses once per nesting level, so a 30,000-deep ``[[[...]]]`` raises RecursionError deep inside
the parser (a 500 before this module), and it accepts ``NaN``/``Infinity`` that JSON itself does not allow. Every
endpoint that reads JSON goes through :func:`loads`; the nesting depth is measured first, vectorised over the raw
bytes, so a hostile body costs one pass and never reaches the recursive parser.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 64
"""Deepest nesting accepted. Kubernetes objects in extender arguments nest about 10 deep; Alertmanager's
payload 3; a fault spec 2."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class BodyError(ValueError):
    """The body is not acceptable JSON; the message says why (for a 400)."""


def nesting_depth(raw: bytes) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text, ignoring brackets inside strings."""
    stripped = _STRING.sub(b'""', raw)
    arr = np.frombuffer(stripped, dtype=np.uint8)
    opens = (arr == ord("[")) | (arr == ord("{"))
    closes = (arr == ord("]")) | (arr == ord("}"))
    if not opens.any():
        return 0
    steps = opens.astype(np.int32) - closes.astype(np.int32)
    return int(np.cumsum(steps).max())


def _no_constant(name: str) -> Any:
    raise BodyError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BodyError(f"number {text[:32]} is out of range")
    return value


def loads(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw`` as strict JSON (UTF-8, no NaN/Infinity, nesting at most ``max_depth``)."""
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise BodyError(f"JSON nested {depth} levels deep; at most {max_depth} allowed")
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except BodyError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise BodyError(f"body is not JSON: {e}") from None
