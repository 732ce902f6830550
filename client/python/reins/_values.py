"""JSON values ⇄ ``google.protobuf.Value`` / ``Struct``."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format, struct_pb2


def _jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON data (tuples become lists); ValueError if it is not JSON."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"not JSON-serialisable: {err}") from err


def to_value(obj: Any) -> struct_pb2.Value:
    """A JSON-serialisable Python value as a ``google.protobuf.Value``.

    Raises ValueError for anything JSON cannot carry, NaN and infinities included (the
    server would refuse a non-finite number).
    """
    value = struct_pb2.Value()
    json_format.ParseDict(_jsonable(obj), value)
    return value


def to_struct(obj: dict[str, Any]) -> struct_pb2.Struct:
    """A JSON object as a ``google.protobuf.Struct`` (ValueError if it is not JSON)."""
    data = _jsonable(obj)
    if not isinstance(data, dict):
        raise ValueError(f"params must be a JSON object, not {type(obj).__name__}")
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def _ints(obj: Any) -> Any:
    # Struct numbers are doubles: give back integral ones as ints (`"steps": 3` → 3).
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 2**53:
        return int(obj)
    if isinstance(obj, dict):
        return {key: _ints(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_ints(value) for value in obj]
    return obj


def from_value(message: struct_pb2.Value | struct_pb2.Struct) -> Any:
    """A ``google.protobuf.Value`` or ``Struct`` as Python data; integral numbers as ints."""
    return _ints(json_format.MessageToDict(message))
