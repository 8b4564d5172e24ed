"""Step 1 of reading an IR: bound its size, parse it as strict JSON, and bound
what the parsed document holds (nesting, value count, strings, numbers) before
any field is looked at.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import IRError
from ._format import INT64_MAX, INT64_MIN, IRLimits

__all__ = ["parse_ir"]


def _reject_constant(name: str) -> Any:
    raise IRError(f"the IR holds the literal {name}; non-finite floats are written as {{\"float\": \"inf\"}}")


def parse_ir(ir: object, limits: IRLimits) -> dict[str, Any]:
    """``ir`` (JSON text, UTF-8 bytes or already parsed) as a size-checked dict."""
    if isinstance(ir, (bytes, bytearray, memoryview)):
        raw = bytes(ir)
        if len(raw) > limits.max_bytes:
            raise IRError(f"the IR is {len(raw)} bytes; the limit is {limits.max_bytes}")
        try:
            ir = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IRError(f"the IR is not UTF-8 text: {exc}") from exc
    if isinstance(ir, str):
        if len(ir) > limits.max_bytes or len(ir.encode("utf-8", "surrogatepass")) > limits.max_bytes:
            raise IRError(f"the IR is larger than the limit of {limits.max_bytes} bytes")
        try:
            data = json.loads(ir, parse_constant=_reject_constant)
        except IRError:
            raise
        except RecursionError as exc:
            raise IRError("the IR's JSON is nested too deeply") from exc
        except ValueError as exc:  # JSONDecodeError, and integers too long to parse
            raise IRError(f"the IR is not valid JSON: {exc}") from exc
        _check_tree(data, limits)
    elif isinstance(ir, dict):
        _check_tree(ir, limits)
        size = len(json.dumps(ir, separators=(",", ":")).encode("utf-8", "surrogatepass"))
        if size > limits.max_bytes:
            raise IRError(f"the IR is {size} bytes as JSON; the limit is {limits.max_bytes}")
        data = ir
    else:
        raise IRError(f"the IR must be a JSON object (dict, str or bytes), not {type(ir).__name__}")
    if not isinstance(data, dict):
        raise IRError(f"the IR must be a JSON object, not a JSON {type(data).__name__}")
    return data


def _check_tree(data: object, limits: IRLimits) -> None:
    """Bound nesting, size, strings and numbers of a parsed document, iteratively."""
    stack: list[tuple[object, int]] = [(data, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > limits.max_values:
            raise IRError(f"the IR holds more than {limits.max_values} JSON values")
        kind = type(value)
        if kind is dict:
            if depth > limits.max_depth:
                raise IRError(f"the IR is nested deeper than {limits.max_depth} levels")
            for key, item in value.items():  # type: ignore[attr-defined]
                if type(key) is not str:
                    raise IRError(f"the IR has a non-string object key {key!r:.40}")
                _check_string(key, limits)
                stack.append((item, depth + 1))
        elif kind is list:
            # Lengths are checked where each list's meaning is known (nodes, shapes, ...).
            if depth > limits.max_depth:
                raise IRError(f"the IR is nested deeper than {limits.max_depth} levels")
            stack.extend((item, depth + 1) for item in value)  # type: ignore[attr-defined]
        elif kind is str:
            _check_string(value, limits)  # type: ignore[arg-type]
        elif kind is int:
            if not INT64_MIN <= value <= INT64_MAX:  # type: ignore[operator]
                raise IRError(f"the IR has an integer outside the 64-bit range: {value!s:.40}")
        elif kind is float:
            if not math.isfinite(value):  # type: ignore[arg-type]
                raise IRError(
                    f"the IR has the float {value} as a plain number; non-finite floats must be "
                    'tagged, e.g. {"float": "inf"}'
                )
        elif kind is not bool and value is not None:
            raise IRError(f"the IR holds a {kind.__name__}; only JSON values are allowed")


def _check_string(text: str, limits: IRLimits) -> None:
    if len(text) > limits.max_string_len:
        raise IRError(f"the IR has a string of {len(text)} characters; the limit is {limits.max_string_len}")
