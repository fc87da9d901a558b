"""Top-K lists for many users at once, streamed to a Parquet file in constant memory.

The output has one row per recommended item: `id` (the user id, or the
request id of a histories file), `rank` (1 = best), `item` (original item
id), `score` and `source` ("model" or "popularity"). Rows are written one
chunk of users at a time, into a temporary file that replaces `out` only
when complete.

A histories file holds one JSON object per line:
    {"id": "u1", "history": ["50", "172"], "timestamps": [881250949, 881251000]}
("timestamps" only for models that read time); a bad line fails naming `file:line`.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recattn_jax.serving.lists import UnknownIdError

CHUNK = 1024  # users scored and written at a time
SCHEMA = pa.schema([("id", pa.string()), ("rank", pa.int32()), ("item", pa.string()),
                    ("score", pa.float32()), ("source", pa.string())])


def read_histories(path: str | pathlib.Path) -> Iterator[tuple[str, list, list | None]]:
  """(id, history, timestamps or None) per line of a JSON-lines file, read lazily."""
  path = pathlib.Path(path)
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not a JSON object ({e.msg})") from None
      if not isinstance(record, dict) or not isinstance(record.get("history"), list):
        raise ValueError(f"{where}: expected an object with a \"history\" list of item ids")
      times = record.get("timestamps")
      if times is not None and (not isinstance(times, list) or len(times) != len(record["history"])):
        raise ValueError(f"{where}: \"timestamps\" must be a list as long as \"history\"")
      yield str(record.get("id", number)), record["history"], times


def count_lines(path: str | pathlib.Path) -> int:
  with open(path, "rb") as f:
    return sum(1 for line in f if line.strip())


def _table(ids: list[str], lists) -> pa.Table:
  columns = {"id": [], "rank": [], "item": [], "score": [], "source": []}
  for request_id, rec in zip(ids, lists):
    n = len(rec.items)
    columns["id"].extend([request_id] * n)
    columns["rank"].extend(range(1, n + 1))
    columns["item"].extend(rec.items)
    columns["score"].extend(np.asarray(rec.scores, np.float32).tolist())
    columns["source"].extend([rec.source] * n)
  return pa.Table.from_pydict(columns, schema=SCHEMA)


def _chunks(iterable: Iterable, size: int):
  iterator = iter(iterable)
  while chunk := list(itertools.islice(iterator, size)):
    yield chunk


def _recommend_histories(rec, chunk, *, k, exclude_seen, unknown):
  """`rec.recommend` of a chunk of (id, history, timestamps); errors name the request."""
  for request_id, history, times in chunk:
    if rec.reads_timestamps and times is None:
      raise ValueError(f"request {request_id!r}: {rec.config.model.name} reads event times; give "
                       "\"timestamps\"")
    if unknown == "error":
      try:
        rec.items.lookup(history, "error")
      except UnknownIdError as e:
        raise UnknownIdError(e.kind, e.ids, f"request {request_id!r}") from None
  return rec.recommend([h for _, h, _ in chunk], k=k, exclude_seen=exclude_seen, unknown="drop",
                       timestamps=[t for _, _, t in chunk] if rec.reads_timestamps else None)


def write_top_k(rec, out: str | pathlib.Path, *, k: int, users: Iterable | None = None,
                histories: Iterable[tuple[str, list, list | None]] | None = None,
                total: int | None = None, exclude_seen: bool = True, unknown: str = "error",
                progress: bool = True) -> int:
  """Writes the top-`k` of every user (or every history) to Parquet `out`; returns the row count.

  Exactly one of `users` (original user ids) and `histories` ((id, history,
  timestamps) triples, e.g. `read_histories(path)`) is given.
  """
  if (users is None) == (histories is None):
    raise ValueError("give users or histories, not both")
  out = pathlib.Path(out)
  tmp = out.with_name(f".{out.name}.tmp")
  rows = 0
  bar = tqdm(total=total, unit="user", disable=not progress, dynamic_ncols=True)
  try:
    with pq.ParquetWriter(tmp, SCHEMA) as writer:
      for chunk in _chunks(users if users is not None else histories, CHUNK):
        if users is not None:
          ids = [str(u) for u in chunk]
          lists = rec.recommend_users(ids, k=k, exclude_seen=exclude_seen)
        else:
          ids = [request_id for request_id, _, _ in chunk]
          lists = _recommend_histories(rec, chunk, k=k, exclude_seen=exclude_seen,
                                       unknown=unknown)
        table = _table(ids, lists)
        writer.write_table(table)
        rows += table.num_rows
        bar.update(len(chunk))
    os.replace(tmp, out)
  finally:
    bar.close()
    tmp.unlink(missing_ok=True)
  return rows
