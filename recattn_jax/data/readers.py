"""Readers that turn published interaction files into one common DataFrame.

Every reader returns the columns of `INTERACTION_COLUMNS`:

  user_id, item_id: the original ids, as strings (never re-typed, so "007" stays
    "007" and ids can be mapped back to the source files);
  timestamp: float64 (the file's time, or the event's position when it has none);
  rating: float64, NaN when the format has no ratings.

Rows keep the file's order: `preprocess.build_sequences` breaks timestamp ties by
that order, so it must not be shuffled here.

Parsing is done by pyarrow (multi-threaded, strict about the number of fields).
Only when it fails does a reader scan the file line by line, to point the user at
the first offending line: the happy path never pays for the Python loop.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from recattn_jax.registry import Registry

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating")

# Files of the GroupLens MovieLens distributions, in the order a folder is searched.
MOVIELENS_FILES = ("u.data", "ratings.dat", "ratings.csv")

_NUMERIC_ID = r"^\d+$"

_log = logging.getLogger(__name__)

PathLike = str | os.PathLike


class DataFormatError(ValueError):
  """A data file does not have the expected format; says which file and where."""


def _fail(path: PathLike, line: int | None, problem: str) -> DataFormatError:
  where = f"{path}, line {line}" if line is not None else f"{path}"
  return DataFormatError(f"{where}: {problem}")


# ----------------------------------------------------------------------------
# Layout of a delimited file and its strict, fast parse.


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How to parse one delimited file, and which fields to check."""

  delimiter: str  # one character, or "::" (rewritten before parsing)
  names: tuple[str, ...]  # every field of a line, in file order
  header: bool  # the first line is a header, not data
  quote: bool  # honour "..." quoting (CSV), else quotes are literal
  ids: tuple[str, ...]  # fields that must be non-empty ids
  numbers: tuple[str, ...]  # fields that must be finite numbers
  numeric_ids: bool = False  # ids must be unsigned integers (GroupLens, S3Rec)
  optional_numbers: tuple[str, ...] = ()  # numbers that may be empty (-> NaN)
  keep: tuple[str, ...] = ()  # fields read as they are, unchecked

  @property
  def used(self) -> list[str]:
    return list(dict.fromkeys(self.ids + self.numbers + self.optional_numbers + self.keep))


def _arrow_source(path: Path, layout: _Layout) -> str | io.BytesIO:
  if len(layout.delimiter) == 1:
    return str(path)
  # pyarrow wants a one-byte delimiter; "::" files (MovieLens 1M/10M) hold only
  # numbers, so a tab cannot occur in a field.
  return io.BytesIO(path.read_bytes().replace(layout.delimiter.encode(), b"\t"))


def _arrow_table(path: Path, layout: _Layout, columns: Sequence[str]) -> pa.Table:
  delimiter = "\t" if len(layout.delimiter) > 1 else layout.delimiter
  return pa_csv.read_csv(
      _arrow_source(path, layout),
      read_options=pa_csv.ReadOptions(
          column_names=list(layout.names), skip_rows=int(layout.header)),
      parse_options=pa_csv.ParseOptions(
          delimiter=delimiter, quote_char='"' if layout.quote else False),
      convert_options=pa_csv.ConvertOptions(
          column_types={c: pa.string() for c in columns},
          include_columns=list(columns),
          strings_can_be_null=False,
          quoted_strings_can_be_null=False),
  )


def _split_line(text: str, layout: _Layout) -> list[str]:
  if layout.quote:
    return next(csv.reader([text], delimiter=layout.delimiter), [])
  return text.split(layout.delimiter)


def _data_lines(path: Path, header: bool):
  """Yields (1-based line number, raw line) for each data line, as pyarrow sees them."""
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      line = raw.rstrip(b"\r\n")
      if (header and number == 1) or not line:
        continue
      yield number, line


def _first_malformed_line(path: Path, layout: _Layout) -> tuple[int, str] | None:
  """The slow path: finds the line pyarrow choked on, to name it in the error."""
  for number, raw in _data_lines(path, layout.header):
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      return number, "is not valid UTF-8"
    try:
      fields = _split_line(text, layout)
    except csv.Error as e:
      return number, f"cannot be split into fields ({e})"
    if len(fields) != len(layout.names):
      return number, (f"expected {len(layout.names)} fields separated by "
                      f"{layout.delimiter!r}, found {len(fields)}: {text[:80]!r}")
  return None


def _line_of_row(path: Path, header: bool, row: int) -> int:
  """1-based line number of data row `row` (0-based); blank lines are not rows."""
  for i, (number, _) in enumerate(_data_lines(path, header)):
    if i == row:
      return number
  raise IndexError(row)


def _first_false(mask: pa.ChunkedArray | pa.Array) -> int | None:
  values = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
  bad = np.flatnonzero(~values)
  return int(bad[0]) if bad.size else None


_Problem = tuple[int, str]  # (0-based data row, what is wrong with it)


def _clean_ids(path: Path, layout: _Layout,
               table: pa.Table) -> tuple[pa.Table, list[_Problem]]:
  """Checks the id fields and trims them of surrounding whitespace.

  Trimming is not cosmetic: Last.fm's user_artists.dat has an artist "65  " that
  is artist 65, and keeping the spaces would invent a 17,633rd artist.
  """
  pattern = _NUMERIC_ID if layout.numeric_ids else r"."
  what = "an unsigned integer id" if layout.numeric_ids else "a non-empty id"
  problems = []
  for name in layout.ids:
    trimmed = pc.utf8_trim_whitespace(table[name])
    row = _first_false(pc.match_substring_regex(trimmed, pattern))
    if row is not None:
      problems.append((row, f"{name} {table[name][row].as_py()!r} is not {what}"))
    changed = pc.sum(pc.not_equal(trimmed, table[name])).as_py()
    if changed:
      _log.warning("%s: trimmed whitespace around %d %s values", path, changed, name)
    table = table.set_column(table.schema.get_field_index(name), name, trimmed)
  return table, problems


def _floats(table: pa.Table, name: str,
            optional: bool) -> tuple[np.ndarray | None, _Problem | None]:
  """The field as float64 (empty -> NaN if `optional`), or the first bad row.

  Arrow's cast is the fast path; pandas' parser (which also takes e.g. "+1") is
  the fallback. Either way NaN and infinities are rejected: they are not
  ratings or times, and would poison sorting and thresholds downstream.
  """
  column = pc.utf8_trim_whitespace(table[name])
  empty = np.asarray(pc.equal(column, "").to_numpy(zero_copy_only=False), dtype=bool)
  if optional:
    column = pc.if_else(pa.array(empty), pa.scalar(None, pa.string()), column)
  try:
    values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
  except pa.ArrowInvalid:
    values = pd.to_numeric(column.to_pandas(), errors="coerce").to_numpy(np.float64)
  values = np.asarray(values, dtype=np.float64)
  bad = ~np.isfinite(values)
  if optional:
    bad &= ~empty
  if bad.any():
    row = int(np.flatnonzero(bad)[0])
    return None, (row, f"{name} {table[name][row].as_py()!r} is not a number")
  return values, None


def _parse(path: Path, layout: _Layout) -> tuple[pa.Table, dict[str, np.ndarray]]:
  """Strictly parses `layout.used` fields; returns strings and checked numbers.

  Raises `DataFormatError` for the first bad line of the file, whatever the kind
  of fault (field count, encoding, id or number).
  """
  try:
    table = _arrow_table(path, layout, layout.used)
  except pa.ArrowInvalid as e:
    found = _first_malformed_line(path, layout)
    if found is not None:
      raise _fail(path, *found) from None
    if not any(True for _ in _data_lines(path, layout.header)):
      raise _fail(path, None, "no data rows") from None
    raise _fail(path, None, f"cannot be parsed ({e})") from None
  if table.num_rows == 0:
    raise _fail(path, None, "no data rows")
  table, problems = _clean_ids(path, layout, table)
  numbers = {}
  for name in layout.numbers + layout.optional_numbers:
    numbers[name], problem = _floats(table, name, name in layout.optional_numbers)
    if problem is not None:
      problems.append(problem)
  if problems:
    row, problem = min(problems)
    raise _fail(path, _line_of_row(path, layout.header, row), problem)
  return table, numbers


def _strings(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
  return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)


def _id_column(column: pa.Array | pa.ChunkedArray) -> pd.Series:
  # Straight from Arrow: pandas' str dtype is Arrow-backed, so this is no copy
  # into millions of Python objects.
  return column.to_pandas().astype(str)


def _interactions(user: pa.Array | pa.ChunkedArray, item: pa.Array | pa.ChunkedArray,
                  timestamp: np.ndarray | None, rating: np.ndarray | None) -> pd.DataFrame:
  """The common frame; missing times become row positions, missing ratings NaN."""
  n = len(user)
  return pd.DataFrame({
      "user_id": _id_column(user),
      "item_id": _id_column(item),
      "timestamp": (np.arange(n, dtype=np.float64) if timestamp is None
                    else np.asarray(timestamp, dtype=np.float64)),
      "rating": (np.full(n, np.nan) if rating is None
                 else np.asarray(rating, dtype=np.float64)),
  })


def _header_fields(path: Path, delimiter: str, quote: bool) -> list[str]:
  with open(path, "rb") as f:
    first = f.readline()
  if not first.strip():
    raise _fail(path, 1, "empty file or blank header line")
  try:
    text = first.decode("utf-8-sig").rstrip("\r\n")
  except UnicodeDecodeError:
    raise _fail(path, 1, "header is not valid UTF-8") from None
  if quote:
    return next(csv.reader([text], delimiter=delimiter))
  return text.split(delimiter)


def _require(path: Path, present: Sequence[str], wanted: str, kind: str) -> None:
  if wanted not in present:
    raise _fail(path, None, f"missing {kind} {wanted!r} (the header has {list(present)})")


# ----------------------------------------------------------------------------
# MovieLens (GroupLens distributions).


def _movielens_layout(path: Path) -> _Layout:
  kind = path.name
  if kind not in MOVIELENS_FILES:
    with open(path, "rb") as f:
      first = f.readline().decode("utf-8", "replace")
    if "::" in first:
      kind = "ratings.dat"
    elif first.lower().startswith("userid"):
      kind = "ratings.csv"
    elif "\t" in first:
      kind = "u.data"
    else:
      raise _fail(path, 1, "not a GroupLens ratings file (u.data, ratings.dat or "
                  "ratings.csv); pass a folder or rename it")
  common = dict(ids=("userId", "movieId"), numbers=("rating", "timestamp"),
                numeric_ids=True)
  if kind == "u.data":
    return _Layout(delimiter="\t", names=("userId", "movieId", "rating", "timestamp"),
                   header=False, quote=False, **common)
  if kind == "ratings.dat":
    return _Layout(delimiter="::", names=("userId", "movieId", "rating", "timestamp"),
                   header=False, quote=False, **common)
  names = tuple(_header_fields(path, ",", quote=True))
  for column in ("userId", "movieId", "rating", "timestamp"):
    _require(path, names, column, "column")
  return _Layout(delimiter=",", names=names, header=True, quote=True, **common)


def find_movielens_file(path: PathLike) -> Path | None:
  """The GroupLens ratings file in `path` or one folder below (as unzipped)."""
  path = Path(path)
  for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
    for name in MOVIELENS_FILES:
      if (folder / name).is_file():
        return folder / name
  return None


def read_movielens(path: PathLike) -> pd.DataFrame:
  """Reads MovieLens 100K `u.data`, 1M/10M `ratings.dat` or 20M/25M/latest `ratings.csv`.

  Args:
    path: one of those files, or a folder holding one (directly or one level
      down, as the GroupLens zips unpack).
  """
  path = Path(path)
  if path.is_dir():
    found = find_movielens_file(path)
    if found is None:
      raise _fail(path, None, f"no GroupLens ratings file ({', '.join(MOVIELENS_FILES)})")
    path = found
  layout = _movielens_layout(path)
  table, numbers = _parse(path, layout)
  return _interactions(table["userId"], table["movieId"], numbers["timestamp"],
                       numbers["rating"])


# ----------------------------------------------------------------------------
# RecBole atomic files.

_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def _recbole_header(path: Path) -> list[tuple[str, str]]:
  fields = []
  for entry in _header_fields(path, "\t", quote=False):
    name, sep, kind = entry.strip().partition(":")
    if not sep or kind not in _RECBOLE_TYPES:
      raise _fail(path, 1, f"header field {entry!r} is not 'name:type' with type in "
                  f"{_RECBOLE_TYPES}")
    fields.append((name, kind))
  return fields


def _single_file(path: Path, suffix: str) -> Path:
  if not path.is_dir():
    return path
  found = sorted(path.glob(f"*{suffix}"))
  if len(found) != 1:
    raise _fail(path, None, f"expected exactly one *{suffix} file, found {len(found)}")
  return found[0]


def read_recbole_atomic(path: PathLike, *, user_field: str = "user_id",
                        item_field: str = "item_id", rating_field: str = "rating",
                        timestamp_field: str = "timestamp") -> pd.DataFrame:
  """Reads a RecBole `.inter` file (typed tab-separated header, `name:type`).

  Ids are any non-empty tokens (trimmed of surrounding whitespace). Rating and
  timestamp are optional: without a timestamp the row position is the time, so
  the file order is the sequence order.

  Args:
    path: the `.inter` file, or a folder holding exactly one.
    user_field, item_field, rating_field, timestamp_field: header names to use.
  """
  path = _single_file(Path(path), ".inter")
  header = _recbole_header(path)
  names = tuple(name for name, _ in header)
  _require(path, names, user_field, "field")
  _require(path, names, item_field, "field")
  numbers = tuple(f for f in (rating_field, timestamp_field) if f in names)
  layout = _Layout(delimiter="\t", names=names, header=True, quote=False,
                   ids=(user_field, item_field), numbers=numbers)
  table, parsed = _parse(path, layout)
  return _interactions(table[user_field], table[item_field],
                       parsed.get(timestamp_field), parsed.get(rating_field))


def read_recbole_item_features(path: PathLike, *, item_field: str = "item_id") -> pd.DataFrame:
  """Reads a RecBole `.item` file into a frame indexed by the original item id.

  `token` fields stay strings, `float` fields become float64 (empty -> NaN), and
  the `_seq` types become lists (split on whitespace; `float_seq` as floats).
  """
  path = _single_file(Path(path), ".item")
  header = _recbole_header(path)
  names = tuple(name for name, _ in header)
  _require(path, names, item_field, "field")
  kinds = dict(header)
  floats = tuple(n for n, k in header if k == "float" and n != item_field)
  rest = tuple(n for n in names if n != item_field and n not in floats)
  layout = _Layout(delimiter="\t", names=names, header=True, quote=False,
                   ids=(item_field,), numbers=(), optional_numbers=floats, keep=rest)
  table, parsed = _parse(path, layout)
  ids = _strings(table[item_field])
  duplicated = pd.Series(ids).duplicated()
  if duplicated.any():
    row = int(np.flatnonzero(duplicated.to_numpy())[0])
    raise _fail(path, _line_of_row(path, True, row), f"{item_field} {ids[row]!r} repeats")
  columns: dict[str, Any] = {}
  for name in names:
    if name == item_field:
      continue
    if kinds[name] == "float":
      columns[name] = parsed[name]
    elif kinds[name] == "token":
      columns[name] = _strings(table[name])
    else:
      columns[name] = _sequence_field(path, table[name], name, kinds[name])
  return pd.DataFrame(columns, index=pd.Index(ids, name=item_field, dtype=str))


def _sequence_field(path: Path, column: pa.ChunkedArray, name: str, kind: str) -> list:
  lists = [value.split() for value in _strings(column)]
  if kind == "token_seq":
    return lists
  out = []
  for row, tokens in enumerate(lists):
    try:
      values = [float(t) for t in tokens]
    except ValueError:
      values = [math.nan]
    if not all(math.isfinite(v) for v in values):
      raise _fail(path, _line_of_row(path, True, row), f"{name} has a non-number")
    out.append(values)
  return out


# ----------------------------------------------------------------------------
# SASRec / S3Rec sequence files: "user item item ..." per line.


def _decode(path: Path, raw: bytes) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise _fail(path, raw.count(b"\n", 0, e.start) + 1, "is not valid UTF-8") from None


def read_sequence_file(path: PathLike) -> pd.DataFrame:
  """Reads a `user item item ...` file (one user per line, items in time order).

  The format has no clock, so an event's timestamp is its position in its line
  (0, 1, 2, ...); that keeps the published order through any later sort. Ids are
  unsigned integers by definition; blank lines are skipped, but a line with a user
  and no items, or a user on two lines, is an error (the order across two lines
  would be a guess).
  """
  path = Path(path)
  lines = pc.utf8_trim_whitespace(pa.array(_decode(path, path.read_bytes()).split("\n")))
  filled = np.asarray(pc.not_equal(lines, "").to_numpy(zero_copy_only=False), dtype=bool)
  if not filled.any():
    raise _fail(path, None, "no data rows")
  line_numbers = np.flatnonzero(filled) + 1
  tokens = pc.split_pattern_regex(lines.filter(pa.array(filled)), r"\s+")
  lengths = pc.list_value_length(tokens).to_numpy().astype(np.int64)
  flat = pc.list_flatten(tokens)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  _check_sequence_lines(path, flat, lengths, starts, line_numbers)

  is_user = np.zeros(len(flat), dtype=bool)
  is_user[starts] = True
  counts = lengths - 1
  owner = np.repeat(starts, counts)  # token index of each item's user
  # Item k of a line sits after the line's user token and those of earlier lines.
  first_item = starts - np.arange(starts.size)
  position = np.arange(counts.sum()) - np.repeat(first_item, counts)
  return _interactions(flat.take(pa.array(owner)), flat.filter(pa.array(~is_user)),
                       position.astype(np.float64), None)


def _check_sequence_lines(path: Path, flat: pa.Array, lengths: np.ndarray,
                          starts: np.ndarray, line_numbers: np.ndarray) -> None:
  """Raises for the first bad line: a non-numeric id, no items, or a repeated user."""
  problems: list[tuple[int, str]] = []
  bad_token = _first_false(pc.match_substring_regex(flat, _NUMERIC_ID))
  if bad_token is not None:
    line = int(np.searchsorted(starts, bad_token, side="right") - 1)
    problems.append((line, f"id {flat[bad_token].as_py()!r} is not an unsigned integer"))
  short = np.flatnonzero(lengths < 2)
  if short.size:
    line = int(short[0])
    problems.append((line, f"user {flat[int(starts[line])].as_py()!r} has no items"))
  users = pd.Series(_strings(flat.take(pa.array(starts))))
  repeated = np.flatnonzero(users.duplicated().to_numpy())
  if repeated.size:
    line = int(repeated[0])
    first = int(np.flatnonzero((users == users[line]).to_numpy())[0])
    problems.append((line, f"user {users[line]!r} already has line {line_numbers[first]}"))
  if problems:
    line, problem = min(problems)
    raise _fail(path, int(line_numbers[line]), problem)


# ----------------------------------------------------------------------------
# Generic tables: CSV/TSV with a header, or Parquet.

_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def _detect_separator(path: Path) -> str:
  """Separator by extension, else the candidate that splits the first lines evenly."""
  if path.suffix.lower() in _SEPARATORS:
    return _SEPARATORS[path.suffix.lower()]
  with open(path, "rb") as f:
    head = [line.decode("utf-8-sig", "replace").rstrip("\r\n") for line in f.readlines(1 << 16)]
  head = [line for line in head if line][:20]
  for candidate in ("\t", ",", ";", "|"):
    counts = {line.count(candidate) for line in head}
    if len(counts) == 1 and counts.pop() > 0:
      return candidate
  raise _fail(path, None, "cannot tell the field separator; pass sep=")


def read_table(path: PathLike, *, user_col: str, item_col: str,
               timestamp_col: str | None = None, rating_col: str | None = None,
               sep: str | None = None, header: bool = True) -> pd.DataFrame:
  """Reads named columns of a CSV/TSV, or of a Parquet file (`.parquet`, `.pq`).

  Without `timestamp_col` the row position is the time (the file order is the
  sequence order); without `rating_col` ratings are NaN. Ids may be any non-empty
  token. `sep` defaults to the extension's (`.csv` comma, `.tsv` tab), else it is
  sniffed from the first lines (tab, comma, semicolon or pipe). Without a
  `header` line the columns are named by their 0-based position ("0", "1", ...).
  """
  path = Path(path)
  if path.suffix.lower() in (".parquet", ".pq"):
    return read_parquet(path, user_col=user_col, item_col=item_col,
                        timestamp_col=timestamp_col, rating_col=rating_col)
  sep = sep or _detect_separator(path)
  if len(sep) != 1:
    raise ValueError(f"sep must be one character, got {sep!r}")
  quote = sep in ",;"
  names = tuple(_header_fields(path, sep, quote))
  if not header:
    names = tuple(str(i) for i in range(len(names)))
  columns = [None if c is None else str(c) for c in (user_col, item_col, timestamp_col, rating_col)]
  for column in columns:
    if column is not None:
      _require(path, names, column, "column")
  user_col, item_col, timestamp_col, rating_col = columns
  numbers = tuple(c for c in (rating_col, timestamp_col) if c is not None)
  layout = _Layout(delimiter=sep, names=names, header=header, quote=quote,
                   ids=(user_col, item_col), numbers=numbers)
  table, parsed = _parse(path, layout)
  return _interactions(table[user_col], table[item_col],
                       parsed.get(timestamp_col), parsed.get(rating_col))


_TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def _parquet_ids(path: Path, column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
  if pa.types.is_integer(column.type):
    column = pc.cast(column, pa.string())
  elif pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
    column = pc.cast(column, pa.string())
  elif not pa.types.is_string(column.type):
    raise _fail(path, None, f"column {name!r} has type {column.type}; ids must be "
                "strings or integers")
  column = pc.utf8_trim_whitespace(column)
  row = _first_false(pc.fill_null(pc.match_substring_regex(column, r"."), False))
  if row is not None:
    raise _fail(path, None, f"row {row + 1}: {name} is empty")
  return column


def _parquet_numbers(path: Path, column: pa.ChunkedArray, name: str) -> np.ndarray:
  kind = column.type
  if pa.types.is_timestamp(kind):
    values = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False) / _TIME_UNITS[kind.unit]
  elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
    values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
  elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
    values, problem = _floats(pa.table({name: pc.cast(column, pa.string())}), name,
                              optional=False)
    if problem is not None:
      raise _fail(path, None, f"row {problem[0] + 1}: {problem[1]}")
  else:
    raise _fail(path, None, f"column {name!r} has type {kind}; expected numbers")
  values = np.asarray(values, dtype=np.float64)
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    raise _fail(path, None, f"row {bad[0] + 1}: {name} is missing or not finite")
  return values


def read_parquet(path: PathLike, *, user_col: str, item_col: str,
                 timestamp_col: str | None = None,
                 rating_col: str | None = None) -> pd.DataFrame:
  """Parquet counterpart of `read_table`; timestamp columns become epoch seconds."""
  path = Path(path)
  try:
    names = pq.read_schema(path).names
  except (pa.ArrowInvalid, OSError) as e:
    raise _fail(path, None, f"not a readable Parquet file ({e})") from None
  wanted = [c for c in (user_col, item_col, timestamp_col, rating_col) if c is not None]
  for column in wanted:
    _require(path, names, column, "column")
  table = pq.read_table(path, columns=list(dict.fromkeys(wanted)))
  if table.num_rows == 0:
    raise _fail(path, None, "no data rows")
  return _interactions(
      _parquet_ids(path, table[user_col], user_col),
      _parquet_ids(path, table[item_col], item_col),
      None if timestamp_col is None else _parquet_numbers(path, table[timestamp_col],
                                                          timestamp_col),
      None if rating_col is None else _parquet_numbers(path, table[rating_col], rating_col))


# ----------------------------------------------------------------------------
# Side information.


def read_item_attributes_json(path: PathLike) -> dict[str, list[int]]:
  """Reads S3Rec's `*_item2attributes.json`: item id -> attribute ids."""
  path = Path(path)
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise _fail(path, e.lineno, f"invalid JSON ({e.msg})") from None
  except UnicodeDecodeError:
    raise _fail(path, None, "is not valid UTF-8") from None
  if not isinstance(data, dict):
    raise _fail(path, None, "expected a JSON object mapping item id -> list of attribute ids")
  if not data:
    raise _fail(path, None, "no items")
  attributes = {}
  for item, values in data.items():
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values):
      raise _fail(path, None, f"item {item!r}: attributes must be a list of integers, "
                  f"got {str(values)[:60]}")
    attributes[str(item)] = [int(v) for v in values]
  return attributes


# ----------------------------------------------------------------------------
# Last.fm HetRec 2011.

LASTFM_PLAYS = "user_artists.dat"


def read_lastfm(path: PathLike) -> pd.DataFrame:
  """Last.fm HetRec 2011 `user_artists.dat` (`userID artistID weight`), or its folder.

  `rating` is the play count. The data has no times, so `timestamp` is the play
  count too: a user's artists come out least-played first, and truncating a
  history to its newest `max_len` events keeps the most-played artists. Equal
  counts keep file order (the sort is stable).
  """
  path = Path(path)
  if path.is_dir():
    path = path / LASTFM_PLAYS
  if not path.is_file():
    raise _fail(path, None, f"no Last.fm {LASTFM_PLAYS} here")
  frame = read_table(path, user_col="userID", item_col="artistID", rating_col="weight", sep="\t")
  bad = np.flatnonzero(frame["rating"].to_numpy() <= 0)
  if bad.size:
    raise _fail(path, int(bad[0]) + 2, f"weight (play count) must be positive, got {frame['rating'].iloc[bad[0]]}")
  frame["timestamp"] = frame["rating"].to_numpy(np.float64)
  return frame


# ----------------------------------------------------------------------------
# Dispatch.

FORMATS = ("movielens", "recbole", "sequence", "csv", "tsv", "parquet", "lastfm")


def detect_format(path: PathLike, *, has_columns: bool = False) -> str:
  """Names the format of `path` from its name, extension or folder contents.

  Args:
    path: a file or folder.
    has_columns: the caller named columns (user_col, ...): `.csv`/`.tsv`/`.dat`/`.txt`
      files are then generic tables rather than MovieLens or sequence files.
  """
  path = Path(path)
  if path.is_dir():
    if find_movielens_file(path) is not None:
      return "movielens"
    if any(path.glob("*.inter")):
      return "recbole"
    if (path / LASTFM_PLAYS).is_file():
      return "lastfm"
    raise _fail(path, None, "no MovieLens ratings file or RecBole .inter file in this folder")
  suffix = path.suffix.lower()
  if suffix in (".parquet", ".pq"):
    return "parquet"
  if has_columns:
    return "csv"
  if path.name in MOVIELENS_FILES:
    return "movielens"
  if path.name == LASTFM_PLAYS:
    return "lastfm"
  if suffix == ".inter":
    return "recbole"
  if suffix == ".txt":
    return "sequence"
  raise _fail(path, None, f"cannot tell the format of {path.name!r}; pass fmt= "
              f"(one of {FORMATS}) and, for tables, user_col/item_col")


# Format name -> reader; `columns=True` readers take user_col/item_col/... (`data.columns`);
# `clock=False` readers make up their timestamps (a sequence file's are positions, Last.fm's
# play counts).
READERS = Registry("data format", "data.format")
READERS.register("movielens")(read_movielens)
READERS.register("recbole")(read_recbole_atomic)
READERS.register("sequence", clock=False)(read_sequence_file)
READERS.register("csv", columns=True)(read_table)
READERS.register("tsv", columns=True)(functools.partial(read_table, sep="\t"))
READERS.register("parquet", columns=True)(read_parquet)
READERS.register("lastfm", clock=False)(read_lastfm)


def read_interactions(path: PathLike, fmt: str = "auto", **kwargs: Any) -> pd.DataFrame:
  """Reads interactions in any supported format; `kwargs` go to the format's reader.

  Args:
    path: file or folder.
    fmt: one of `FORMATS`, or "auto" (see `detect_format`).
    **kwargs: e.g. user_col=, item_col= for "csv"/"parquet".
  """
  if fmt == "auto":
    fmt = detect_format(path, has_columns="user_col" in kwargs)
  if fmt not in READERS:
    raise ValueError(f"unknown format {fmt!r}; choose one of {READERS.names()} or 'auto'")
  return READERS.get(fmt)(path, **kwargs)


def item_titles(original_ids: np.ndarray, source: str | Path) -> np.ndarray:
  """Display name of each internal item id: the title when the data folder has one.

  Reads a RecBole `.item` file (title and year fields) or GroupLens `u.item`
  beside the interactions; otherwise the original ids are the names.
  """
  source = Path(source)
  folder = source if source.is_dir() else source.parent
  names = {}
  recbole = sorted(p for p in folder.glob("*.item") if p.name != "u.item")  # u.item: GroupLens
  if recbole:
    frame = read_recbole_item_features(recbole[0])
    title = next((c for c in frame.columns if "title" in c), None)
    year = next((c for c in frame.columns if "year" in c), None)
    if title is not None:
      for item_id, row in frame.iterrows():
        text = row[title]
        text = " ".join(text) if isinstance(text, list) else str(text)
        names[item_id] = f"{text} ({row[year]})" if year is not None and row[year] else text
  elif (folder / "u.item").is_file():
    for line in (folder / "u.item").read_text(encoding="latin-1").splitlines():
      fields = line.split("|")
      if len(fields) > 1:
        names[fields[0]] = fields[1]
  return np.asarray([names.get(str(i), str(i)) for i in original_ids], dtype=object)
