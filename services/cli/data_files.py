"""Files of labelled examples for `liveml data push`: a CSV or Parquet file's columns
mapped onto a model's input features, and every value checked against the model's
signature, naming the file's line, before anything is sent.

Columns are named as the model's features are (`examples.features`): an input `x` of
shape [-1, 4] is the columns `x[0]` ... `x[3]`; in Parquet one list column `x` of
four numbers per row may stand for them. Besides the features a file holds the label
column and, if asked for, a key column and group columns: any other column is an
error, so a file meant for another model is not stored by mistake.

A file is read twice: `check` reads all of it and finds every problem before a row
is sent (the registry stores an import whole or not at all, and this way its check is
seldom the one that fires); `rows` then yields what is sent. Lines are the file's:
in a CSV the header is line 1, so the first row is line 2; in Parquet, row N is N.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from services.common.examples import Feature
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb

Format = Literal["csv", "parquet"]
LabelKind = Literal["class_index", "number", "text"]
SUFFIXES: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_KEY = 160  # the registry prefixes keys with `import:MODEL:` in a 256-character field
MAX_GROUP = 200
TRUE, FALSE = {"true", "t", "yes", "1"}, {"false", "f", "no", "0"}
NAN_TEXTS = {"", "nan", "na", "n/a", "null"}


class FileError(Exception):
    """What is wrong with the file, as the user should read it."""


@dataclass(frozen=True)
class Columns:
    """Which of the file's columns feed what."""

    features: list[Feature]
    label: str
    key: str | None = None
    groups: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    line: int
    features: list[float]
    label: gpb.Label
    key: str
    group: str


@dataclass(frozen=True)
class Checked:
    """What `check` learned: rows, and the label's kind over the whole column."""

    rows: int
    label_kind: LabelKind


def file_format(path: Path, max_bytes: int) -> Format:
    """The file's format; FileError when it is not one, is empty, or is too large."""
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise FileError(f"{path.name}: expected a .csv or .parquet file")
    size = path.stat().st_size
    if size == 0:
        raise FileError(f"{path.name} is empty: no rows to push")
    if size > max_bytes:
        raise FileError(
            f"{path.name} is {size} bytes, over the limit of {max_bytes} (--max-bytes); "
            "split the file"
        )
    return fmt


def _number(value: Any, feature: Feature, where: str) -> float:
    """A cell as the feature's number; FileError naming the line when it is not one."""
    if value is None:
        number = math.nan
    elif isinstance(value, int | float):  # bool is an int
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        lowered = text.lower()
        if lowered in NAN_TEXTS:
            number = math.nan
        elif feature.datatype == "BOOL" and lowered in TRUE | FALSE:
            number = 1.0 if lowered in TRUE else 0.0
        else:
            try:
                number = float(text)
            except ValueError:
                raise FileError(
                    f"{where}: column '{feature.name}' is {value!r}, not a number "
                    f"(the model's input is {feature.datatype})"
                ) from None
    else:
        raise FileError(
            f"{where}: column '{feature.name}' holds a {type(value).__name__}, not a number "
            f"(the model's input is {feature.datatype})"
        )
    if feature.integral:
        if math.isnan(number):
            raise FileError(
                f"{where}: column '{feature.name}' is empty or NaN, but the model's input is "
                f"{feature.datatype}, which has no NaN"
            )
        if not number.is_integer():
            raise FileError(
                f"{where}: column '{feature.name}' is {value!r}, not a whole number "
                f"(the model's input is {feature.datatype})"
            )
        if feature.datatype == "BOOL" and number not in (0.0, 1.0):
            raise FileError(
                f"{where}: column '{feature.name}' is {value!r}; the model's input is BOOL: "
                "use true/false or 1/0"
            )
    return number


def _label_kind(value: Any, column: str, where: str) -> LabelKind:
    """The narrowest kind of label a cell can be."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise FileError(f"{where}: the label column '{column}' is empty")
    if isinstance(value, bool | int):
        return "class_index"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FileError(f"{where}: the label is {value}, not a finite number")
        return "number"
    text = str(value).strip()
    try:
        int(text)
        return "class_index"
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return "text"
    if not math.isfinite(number):
        raise FileError(f"{where}: the label is {text!r}, not a finite number")
    return "number"


KIND_ORDER: dict[LabelKind, int] = {"class_index": 0, "number": 1, "text": 2}


def _label(value: Any, kind: LabelKind) -> gpb.Label:
    if kind == "text":
        return gpb.Label(text=str(value).strip())
    if kind == "number":
        return gpb.Label(number=float(value))
    return gpb.Label(class_index=int(value) if not isinstance(value, str) else int(value.strip()))


def _text(value: Any, what: str, column: str, where: str, limit: int, required: bool) -> str:
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise FileError(f"{where}: the {what} column '{column}' is empty")
    if len(text) > limit:
        raise FileError(f"{where}: the {what} in '{column}' is longer than {limit} characters")
    return text


class ExampleFile:
    """One file of examples: its columns, then its rows, checked."""

    def __init__(self, path: Path, fmt: Format) -> None:
        self.path = path
        self.format = fmt
        self._table: Any = None
        self._lists: set[str] = set()

    # --- reading ---------------------------------------------------------------------

    def _parquet(self) -> Any:
        if self._table is None:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise FileError(
                    "reading Parquet needs pyarrow: pip install 'liveml[parquet]'"
                ) from None
            try:
                self._table = pq.read_table(self.path)
            except Exception as exc:  # pyarrow's errors have no common base of their own
                raise FileError(f"{self.path.name}: not a readable Parquet file ({exc})") from None
            import pyarrow as pa

            self._lists = {
                f.name
                for f in self._table.schema
                if pa.types.is_list(f.type)
                or pa.types.is_large_list(f.type)
                or pa.types.is_fixed_size_list(f.type)
            }
        return self._table

    def columns(self) -> list[str]:
        if self.format == "parquet":
            return list(self._parquet().column_names)
        with self.path.open(newline="", encoding="utf-8-sig") as f:
            try:
                header = next(csv.reader(f), None)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise FileError(
                    f"{self.path.name} line 1: not a readable CSV header ({exc})"
                ) from None
        if header is None or not any(h.strip() for h in header):
            raise FileError(f"{self.path.name} is empty: no header and no rows")
        names = [h.strip() for h in header]
        seen: set[str] = set()
        for name in names:
            if not name:
                raise FileError(f"{self.path.name} line 1: a column has no name")
            if name in seen:
                raise FileError(f"{self.path.name} line 1: column '{name}' appears twice")
            seen.add(name)
        return names

    def _records(self, wanted: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line, {column: value}) for each row, with only the wanted columns."""
        if self.format == "parquet":
            table = self._parquet()
            values = {c: table.column(c).to_pylist() for c in wanted}
            for i in range(table.num_rows):
                yield i + 1, {c: values[c][i] for c in wanted}
            return
        name = self.path.name
        with self.path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader)]
            index = {c: header.index(c) for c in wanted}
            last = reader.line_num
            try:
                for record in reader:
                    line, last = last + 1, reader.line_num
                    if not record:  # a blank line between rows
                        continue
                    if len(record) != len(header):
                        raise FileError(
                            f"{name} line {line}: {len(record)} fields, the header has "
                            f"{len(header)}"
                        )
                    yield line, {c: record[i] for c, i in index.items()}
            except (csv.Error, UnicodeDecodeError) as exc:
                raise FileError(f"{name} line {last + 1}: not readable as CSV ({exc})") from None

    # --- mapping ---------------------------------------------------------------------

    def _inputs(self, features: Sequence[Feature]) -> dict[str, list[Feature]]:
        """Input name -> its features, for inputs wider than one feature."""
        out: dict[str, list[Feature]] = {}
        for feature in features:
            base, bracket, _ = feature.name.partition("[")
            if bracket:
                out.setdefault(base, []).append(feature)
        return out

    def mapping(self, columns: Columns) -> list[str]:
        """The file's columns that are read; FileError naming missing and extra ones."""
        names = self.columns()
        present = set(names)
        if self.format == "parquet":
            self._parquet()
        # A Parquet list column named as an input stands for all of its features.
        covered = {
            f.name
            for base, fs in self._inputs(columns.features).items()
            if base in self._lists
            for f in fs
        }
        wanted_features = [f.name for f in columns.features if f.name not in covered]
        wanted_features += sorted(set(self._inputs(columns.features)) & self._lists)
        roles = [columns.label, *([columns.key] if columns.key else []), *columns.groups]
        missing = [c for c in wanted_features if c not in present]
        missing_roles = [c for c in roles if c not in present]
        known = set(wanted_features) | set(roles)
        extra = [c for c in names if c not in known]
        problems = []
        if missing:
            problems.append(f"missing feature column(s) {', '.join(repr(c) for c in missing)}")
        if missing_roles:
            problems.append(
                f"missing column(s) {', '.join(repr(c) for c in missing_roles)} "
                "(named by --label / --key / --group)"
            )
        if extra:
            problems.append(
                f"extra column(s) {', '.join(repr(c) for c in extra)}: not an input feature of "
                "the model, nor named by --label / --key / --group"
            )
        if problems:
            expected = ", ".join(f.name for f in columns.features)
            raise FileError(
                f"{self.path.name}: {'; '.join(problems)} (the model's features are "
                f"{expected}; the label column is '{columns.label}')"
            )
        overlap = [c for c in roles if c in set(wanted_features) | self._lists]
        if overlap or len(set(roles)) != len(roles):
            raise FileError(
                "--label, --key and --group must name different columns, none of them a feature"
            )
        return [*wanted_features, *roles]

    # --- rows ------------------------------------------------------------------------

    def _where(self, line: int) -> str:
        return f"{self.path.name} {'line' if self.format == 'csv' else 'row'} {line}"

    def _group(self, record: dict[str, Any], columns: Columns, where: str) -> str:
        """The row's group: one column's value, or several joined by '/'."""
        parts = [_text(record[g], "group", g, where, MAX_GROUP, False) for g in columns.groups]
        group = "/".join(parts) if any(parts) else ""
        if len(group) > MAX_GROUP:
            raise FileError(f"{where}: the group {group!r} is longer than {MAX_GROUP} characters")
        return group

    def _key(self, record: dict[str, Any], columns: Columns, where: str) -> str:
        if not columns.key:
            return ""
        return _text(record[columns.key], "key", columns.key, where, MAX_KEY, True)

    def _row(self, line: int, record: dict[str, Any], columns: Columns) -> list[float]:
        where = self._where(line)
        lists = self._inputs(columns.features)
        out: list[float] = []
        done: set[str] = set()
        for feature in columns.features:
            base = feature.name.partition("[")[0]
            if base in self._lists and base in lists:
                if base in done:
                    continue
                done.add(base)
                values = record[base]
                width = len(lists[base])
                if values is None or len(values) != width:
                    got = "null" if values is None else f"{len(values)} values"
                    raise FileError(
                        f"{where}: column '{base}' has {got}, the model's input takes {width}"
                    )
                out.extend(_number(v, f, where) for v, f in zip(values, lists[base], strict=True))
            else:
                out.append(_number(record[feature.name], feature, where))
        return out

    def check(self, columns: Columns, progress: Any = None) -> Checked:
        """Read the whole file, checking every value; FileError at the first problem."""
        wanted = self.mapping(columns)
        kind: LabelKind = "class_index"
        count = 0
        for line, record in self._records(wanted):
            where = self._where(line)
            self._row(line, record, columns)
            seen = _label_kind(record[columns.label], columns.label, where)
            kind = seen if KIND_ORDER[seen] > KIND_ORDER[kind] else kind
            self._key(record, columns, where)
            self._group(record, columns, where)
            count += 1
            if progress is not None:
                progress(1)
        if count == 0:
            what = "a header but no rows" if self.format == "csv" else "no rows"
            raise FileError(f"{self.path.name} has {what}: nothing to push")
        return Checked(count, kind)

    def rows(self, columns: Columns, checked: Checked) -> Iterator[Row]:
        """The file's rows as sent (after `check` found none wrong)."""
        wanted = self.mapping(columns)
        for line, record in self._records(wanted):
            where = self._where(line)
            yield Row(
                line=line,
                features=self._row(line, record, columns),
                label=_label(record[columns.label], checked.label_kind),
                key=self._key(record, columns, where),
                group=self._group(record, columns, where),
            )
