"""Identity of a user transform, so that it can be part of a dataset's version.

>>> def tokenize(batch): return batch
>>> transform_id(tokenize).split(".")[-1].split("@")[0], transform_id(None)
('tokenize', None)

A callable may declare its own identity with a ``transform_id`` attribute, e.g. a
version string that changes whenever its output changes; otherwise the identity is
its qualified name plus a hash of its code, constants, default arguments, closure
values and (for callable objects) attributes, so ``partial``-like parameters count.
Code it calls into is not hashed: give such a transform a ``transform_id``.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import xxhash

from ..errors import ConfigError

__all__ = ["Transform", "apply_transform", "transform_id"]

Transform = Callable[[pa.RecordBatch], pa.RecordBatch]
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _code_digest(code: types.CodeType, h: Any) -> None:
    h.update(code.co_code)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, h)
        else:
            h.update(_stable_repr(const))
    h.update(repr(code.co_names).encode())


def _stable_repr(value: Any) -> bytes:
    # Object addresses change from run to run; the version must not.
    return _ADDRESS.sub("", repr(value)).encode()


def _state_digest(obj: Any, h: Any) -> None:
    """Parameters that change a function's output without changing its code."""
    for cell in getattr(obj, "__closure__", None) or ():
        try:
            h.update(_stable_repr(cell.cell_contents))
        except ValueError:  # an empty cell
            pass
    for value in (getattr(obj, "__defaults__", None), getattr(obj, "__kwdefaults__", None)):
        if value:
            h.update(_stable_repr(value))


def transform_id(transform: Transform | None) -> str | None:
    """A stable identity for ``transform`` (``None`` for no transform)."""
    if transform is None:
        return None
    if not callable(transform):
        raise ConfigError(f"transform={transform!r} is not callable; pass a function RecordBatch -> RecordBatch")
    declared = getattr(transform, "transform_id", None)
    if isinstance(declared, str) and declared:
        return declared
    is_function = isinstance(transform, types.FunctionType)
    fn = transform if is_function else getattr(type(transform), "__call__", transform)  # noqa: B004
    name = f"{getattr(transform, '__module__', '?')}.{getattr(transform, '__qualname__', type(transform).__qualname__)}"
    h = xxhash.xxh3_64()
    code = getattr(fn, "__code__", None)
    if code is not None:
        _code_digest(code, h)
    _state_digest(fn, h)
    if not is_function:
        state = getattr(transform, "__dict__", None)
        h.update(_stable_repr(sorted(state.items()) if isinstance(state, dict) else transform))
    return f"{name}@{h.hexdigest()}"


def apply_transform(transform: Transform | None, table: pa.Table) -> pa.Table:
    """Run ``transform`` on the shard's rows as one RecordBatch; check what comes back.

    A transform maps rows one to one (it may change columns, not the number of rows),
    because each shard records which source rows it holds.
    """
    if transform is None:
        return table
    batches = table.combine_chunks().to_batches()
    batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
    out = transform(batch)
    if isinstance(out, pa.Table):
        out_table = out
    elif isinstance(out, pa.RecordBatch):
        out_table = pa.Table.from_batches([out])
    else:
        raise ConfigError(f"transform returned {type(out).__name__}; it must return a pyarrow RecordBatch or Table")
    if out_table.num_rows != table.num_rows:
        raise ConfigError(
            f"transform returned {out_table.num_rows} rows for {table.num_rows}; it must map rows one to one "
            "(filter rows before the prefetch, or mark them with a column)"
        )
    return out_table
