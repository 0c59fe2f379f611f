"""A run's dataset: the policy's columns read from their source, cleaned, ordered by
event time, windowed and split into the training rows and the holdout.

The holdout is the most recent slice, never trained on, so the gate judges a
candidate the way production will meet it: on data newer than what it learned from.
The digest covers exactly the rows used (features, labels, in order), so two runs on
the same data say so.
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt

from services.common.gen.liveml.training.v1 import training_pb2 as tpb

DEFAULT_HOLDOUT = 0.2


class DataError(Exception):
    """The data cannot make a run: the message says what is wrong and where."""


@dataclass
class Table:
    """Rows read from a source: the policy's columns, as text or numbers."""

    columns: dict[str, list[Any]]
    uri: str
    first_sequence: int = 0
    last_sequence: int = 0

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()), []))


@dataclass
class Split:
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[Any]
    x_holdout: npt.NDArray[np.float32]
    y_holdout: npt.NDArray[Any]
    groups_holdout: npt.NDArray[Any] | None
    digest: str
    rows: int
    dropped: int  # rows left out for a NaN or an empty value


def _path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise DataError(f"dataset_uri {uri!r}: only file:// URIs are read")
    return Path(unquote(parsed.path))


def wanted_columns(policy: tpb.TrainingPolicy) -> list[str]:
    columns = [*policy.features, policy.label]
    for extra in (policy.time_column, policy.gate.slice_column):
        if extra and extra not in columns:
            columns.append(extra)
    return columns


def read_file(uri: str, columns: Sequence[str]) -> Table:
    path = _path(uri)
    if not path.is_file():
        raise DataError(f"dataset_uri {uri!r}: no such file")
    if path.suffix == ".parquet":
        return _read_parquet(path, uri, columns)
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{uri}: the file is empty (no header row)")
        index = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in columns if c not in index]
        if missing:
            raise DataError(
                f"{uri}: no column {', '.join(map(repr, missing))} in the header "
                f"(it has {', '.join(header)})"
            )
        out: dict[str, list[Any]] = {c: [] for c in columns}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{uri} line {line}: {len(row)} values, the header has {len(header)}"
                )
            for c in columns:
                out[c].append(row[index[c]])
    return Table(out, uri)


def _read_parquet(path: Path, uri: str, columns: Sequence[str]) -> Table:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise DataError(f"{uri}: reading Parquet needs pyarrow, which is not installed") from None
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(
            f"{uri}: no column {', '.join(map(repr, missing))} (it has "
            f"{', '.join(table.column_names)})"
        )
    return Table({c: table.column(c).to_pylist() for c in columns}, uri)


def _number(value: Any, column: str, row: int, uri: str) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"{uri} row {row + 1}: column {column!r} holds {value!r}, not a number"
        ) from None


def _column(values: list[Any], column: str, uri: str) -> npt.NDArray[np.float64]:
    """A column as numbers; an empty value is NaN; anything else names its row."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([_number(v, column, i, uri) for i, v in enumerate(values)])


def _time(value: Any, row: int, column: str, uri: str) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise DataError(
            f"{uri} row {row + 1}: time column {column!r} holds {value!r}, neither seconds "
            "since the epoch nor an RFC 3339 time"
        ) from None


def split(table: Table, policy: tpb.TrainingPolicy, now: float | None = None) -> Split:
    uri = table.uri
    n = table.rows
    if n == 0:
        raise DataError(f"{uri}: no rows to train on")
    x = np.stack([_column(table.columns[f], f, uri) for f in policy.features], axis=1)
    y = _column(table.columns[policy.label], policy.label, uri)
    if policy.time_column:
        column = table.columns[policy.time_column]
        try:
            times = np.asarray(column, dtype=np.float64)
        except (TypeError, ValueError):
            times = np.array([_time(v, i, policy.time_column, uri) for i, v in enumerate(column)])
    else:
        times = np.arange(n, dtype=np.float64)
    groups = (
        np.array([str(v) for v in table.columns[policy.gate.slice_column]], dtype=object)
        if policy.gate.slice_column
        else None
    )
    keep = np.isfinite(x).all(axis=1) & np.isfinite(y)
    dropped = int(n - keep.sum())
    if not keep.any():
        raise DataError(
            f"{uri}: every one of its {n} rows has a NaN, an infinity or an empty value "
            "in a feature or the label"
        )
    x, y, times = x[keep], y[keep], times[keep]
    groups = groups[keep] if groups is not None else None
    if policy.task == tpb.TRAINING_TASK_CLASSIFICATION:
        if not np.all(y == np.round(y)):
            raise DataError(
                f"{uri}: label column {policy.label!r} must hold class indices (integers) "
                "for a classification policy"
            )
        y = y.astype(np.int64)
    order = np.argsort(times, kind="stable")
    x, y, times = x[order], y[order], times[order]
    groups = groups[order] if groups is not None else None
    window = policy.window
    start = 0
    if window.last.ToNanoseconds() and policy.time_column:
        cutoff = (now or time.time()) - window.last.ToNanoseconds() / 1e9
        start = int(np.searchsorted(times, cutoff, side="left"))
    if window.last_rows:
        start = max(start, len(y) - int(window.last_rows))
    x, y = x[start:], y[start:]
    groups = groups[start:] if groups is not None else None
    rows = len(y)
    if rows < 2:
        raise DataError(f"{uri}: the training window holds {rows} row(s); a run needs two or more")
    holdout = int(policy.holdout.rows) or round(rows * (policy.holdout.fraction or DEFAULT_HOLDOUT))
    holdout = min(max(holdout, 1), rows - 1)
    cut = rows - holdout
    x32 = x.astype(np.float32)
    digest = hashlib.sha256(x32.tobytes() + y.tobytes()).hexdigest()
    return Split(
        x32[:cut],
        y[:cut],
        x32[cut:],
        y[cut:],
        groups[cut:] if groups is not None else None,
        digest,
        rows,
        dropped,
    )


def count_rows(uri: str) -> int:
    """Data rows of a file (for the data-volume trigger), without parsing them."""
    path = _path(uri)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            return 0
        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open("rb") as handle:
        return max(0, sum(1 for line in handle if line.strip()) - 1)


def columns_of(rows: Iterable[dict[str, Any]], columns: Sequence[str], uri: str) -> Table:
    """A table from dict rows (examples from the event stream)."""
    out: dict[str, list[Any]] = {c: [] for c in columns}
    for row in rows:
        for c in columns:
            out[c].append(row.get(c))
    return Table(out, uri)
