"""How feature values are encoded as Redis hash field values, one type at a time.

Values are compact and binary-safe (Redis bulk strings carry any bytes), never JSON:

=============  ======================================  ==========================================
type           accepted parquet/arrow column types     stored as
=============  ======================================  ==========================================
int32, int64   any integer type (range-checked)        decimal ASCII (Redis keeps it as an int)
float32        any float or integer type               4 bytes, IEEE-754 little-endian
float64        any float or integer type               8 bytes, IEEE-754 little-endian
bool           bool                                    ``1`` / ``0``
string         string, large_string, dictionary<str>   UTF-8 bytes
string_list    list<string> (any list kind)            items joined by ``\\x1f`` (unit separator)
float_list     list<float or int>                      packed float32 little-endian
=============  ======================================  ==========================================

A null value is not stored at all (the field is absent), and the reader returns ``None``.
``string_list`` cannot tell ``[]`` from ``[""]``; both read back as ``[]``.

Encoding is vectorised over Arrow arrays (the materializer encodes 10^5 values per call);
decoding is per value, because the gateway reads a handful of entities per request.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat
from numpy.typing import NDArray

from recsys_contract.materialize import FEATURE_TYPES

LIST_SEPARATOR = "\x1f"

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _is_string(t: pa.DataType) -> bool:
    if pat.is_dictionary(t):
        return bool(pat.is_string(t.value_type) or pat.is_large_string(t.value_type))
    is_view = getattr(pat, "is_string_view", None)  # pyarrow >= 16
    return bool(pat.is_string(t) or pat.is_large_string(t) or (is_view is not None and is_view(t)))


def _is_list(t: pa.DataType) -> bool:
    return bool(pat.is_list(t) or pat.is_large_list(t) or pat.is_fixed_size_list(t))


def type_mismatch(declared: str, actual: pa.DataType) -> str | None:
    """Why a column of ``actual`` type cannot hold a feature of ``declared`` type, or None."""
    ok: bool
    if declared in ("int32", "int64"):
        ok = pat.is_integer(actual)
    elif declared in ("float32", "float64"):
        ok = pat.is_floating(actual) or pat.is_integer(actual)
    elif declared == "bool":
        ok = pat.is_boolean(actual)
    elif declared == "string":
        ok = _is_string(actual)
    elif declared == "string_list":
        ok = _is_list(actual) and _is_string(actual.value_type)
    elif declared == "float_list":
        ok = _is_list(actual) and (
            pat.is_floating(actual.value_type) or pat.is_integer(actual.value_type)
        )
    else:
        return f"unknown feature type {declared!r} (one of {', '.join(FEATURE_TYPES)})"
    if ok:
        return None
    return f"has type {actual}, which cannot hold a {declared} feature"


def _fixed_width_binary(values: NDArray[np.floating[Any]], validity: pa.Array | None) -> pa.Array:
    """Each element's little-endian bytes as one binary value (no copy per element)."""
    width = values.dtype.itemsize
    offsets = np.arange(len(values) + 1, dtype=np.int32) * width
    mask = None if validity is None else validity.buffers()[1]
    data = np.ascontiguousarray(values).view(np.uint8)
    return pa.Array.from_buffers(
        pa.binary(), len(values), [mask, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _validity(array: pa.Array) -> pa.Array | None:
    if array.null_count == 0:
        return None
    return pc.is_valid(array)


def value_problem(array: pa.Array | pa.ChunkedArray, declared: str) -> str | None:
    """Why some values of a well-typed column still cannot be stored, or None.

    Checked over the whole column before the first write, so a run never fails half-way.
    """
    if declared == "int32" and len(array) and array.null_count < len(array):
        lo, hi = _INT_RANGES["int32"]
        bounds = pc.min_max(array)
        if bounds["min"].as_py() < lo or bounds["max"].as_py() > hi:
            return f"holds values from {bounds['min']} to {bounds['max']}, beyond int32"
    if declared == "float_list" and pc.list_flatten(array).null_count:
        return "holds lists with null elements, which a float_list cannot store"
    return None


def encode(array: pa.Array, declared: str) -> pa.Array:
    """Encode one column into a binary array of field values (null stays null).

    Raises ValueError with a reason when values do not fit the declared type (an int64 column
    with values beyond int32, a list with null elements in a float_list).
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if declared in ("int32", "int64"):
        problem = value_problem(array, declared)
        if problem:
            raise ValueError(problem)
        return pc.cast(array, pa.string()).cast(pa.binary())
    if declared in ("float32", "float64"):
        dtype = np.dtype("<f4") if declared == "float32" else np.dtype("<f8")
        filled = pc.fill_null(array, 0).to_numpy(zero_copy_only=False).astype(dtype)
        return _fixed_width_binary(filled, _validity(array))
    if declared == "bool":
        return pc.if_else(array, pa.scalar(b"1"), pa.scalar(b"0"))
    if declared == "string":
        return pc.cast(array, pa.string()).cast(pa.binary())
    if declared == "string_list":
        strings = pc.cast(array, pa.list_(pa.string()))
        return pc.binary_join(strings, LIST_SEPARATOR).cast(pa.binary())
    if declared == "float_list":
        lists = pc.cast(array, pa.list_(pa.float32()))
        problem = value_problem(lists, declared)
        if problem:
            raise ValueError(problem)
        offsets = np.asarray(lists.offsets.to_numpy(), dtype=np.int64)
        values = lists.values.slice(offsets[0], offsets[-1] - offsets[0])
        data = values.to_numpy(zero_copy_only=False).astype("<f4").view(np.uint8)
        byte_offsets = ((offsets - offsets[0]) * 4).astype(np.int32)
        mask = None if lists.null_count == 0 else pc.is_valid(lists).buffers()[1]
        return pa.Array.from_buffers(
            pa.binary(),
            len(lists),
            [mask, pa.py_buffer(byte_offsets), pa.py_buffer(np.ascontiguousarray(data))],
        )
    raise ValueError(f"unknown feature type {declared!r}")


def decode(raw: bytes | None, declared: str) -> Any:
    """One stored field value back to Python (``None`` when the field is absent)."""
    if raw is None:
        return None
    if declared in ("int32", "int64"):
        return int(raw)
    if declared == "float32":
        return struct.unpack("<f", raw)[0]
    if declared == "float64":
        return struct.unpack("<d", raw)[0]
    if declared == "bool":
        return raw == b"1"
    if declared == "string":
        return raw.decode()
    if declared == "string_list":
        text = raw.decode()
        return text.split(LIST_SEPARATOR) if text else []
    if declared == "float_list":
        return np.frombuffer(raw, dtype="<f4").tolist()
    raise ValueError(f"unknown feature type {declared!r}")
