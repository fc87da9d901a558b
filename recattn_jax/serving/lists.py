"""What a recommendation request gets back, and the id vocabularies requests are read with."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

MAX_BATCH = 256  # most rows scored in one call; larger requests are split
ITEM_CHUNK = 4096  # items scored at once by the top-K scan
UNKNOWN_POLICIES = ("error", "drop")


class UnknownIdError(ValueError):
  """A request named item or user ids the model was not trained with."""

  def __init__(self, kind: str, ids: Sequence[str], where: str = ""):
    self.kind, self.ids = kind, list(ids)
    shown = ", ".join(repr(i) for i in self.ids[:10]) + (" ..." if len(self.ids) > 10 else "")
    hint = " (pass unknown='drop' to ignore them)" if kind == "item" else ""
    prefix = f"{where}: " if where else ""
    super().__init__(f"{prefix}{len(self.ids)} unknown {kind} id(s): {shown}{hint}")


@dataclasses.dataclass
class Recommendation:
  """One list: original item ids, best first, and their scores."""

  items: list[str]
  scores: np.ndarray  # float32 [len(items)]
  source: str = "model"  # or "popularity" (empty history): scores are then training counts
  dropped: list[str] = dataclasses.field(default_factory=list)  # unknown ids ignored
  truncated: int = 0  # oldest history events beyond max_len, not read by the encoder

  def to_dict(self) -> dict:
    return {"items": self.items, "scores": [float(s) for s in self.scores],
            "source": self.source, "dropped": self.dropped, "truncated": self.truncated}


def list_length(k: int) -> int:
  """The compiled top-K length serving `k`: a power of two, at least 16."""
  return max(16, 1 << (int(k) - 1).bit_length())


def exclude_width(n: int) -> int:
  """Columns of the compiled seen-items mask for histories of `n` events (a power of two >= 64)."""
  return max(64, 1 << max(0, int(n) - 1).bit_length())


def batch_rows(n: int, most: int = MAX_BATCH) -> int:
  """Rows of the compiled batch serving `n` requests: a power of two up to `most`."""
  return min(most, 1 << max(0, int(n) - 1).bit_length())


def rows_per_call(max_len: int, platform: str) -> int:
  """Rows encoded in one call: MAX_BATCH, or on CPU about 4096 tokens' worth.

  On CPU a call of 256 rows x 50 events encodes several times slower per row
  than calls of 64 (measured by benchmarks/serving_bench.py), so larger
  requests are split there.
  """
  if platform != "cpu":
    return MAX_BATCH
  return max(8, min(MAX_BATCH, 1 << ((4096 // max_len).bit_length() - 1)))


class Vocabulary:
  """Original id (str) <-> internal index; index 0 of the item vocabulary is padding."""

  def __init__(self, ids: np.ndarray, kind: str, first: int = 0):
    self.ids = np.asarray([str(i) for i in ids], dtype=object)
    self.kind = kind
    self.index = {value: i for i, value in enumerate(self.ids) if i >= first}

  def __len__(self) -> int:
    return len(self.index)

  def __contains__(self, value) -> bool:
    return str(value) in self.index

  def lookup(self, values: Sequence, unknown: str = "error") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(indices of the known values, which positions were kept [bool], the unknown values)."""
    if unknown not in UNKNOWN_POLICIES:
      raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
    found = [self.index.get(str(v), -1) for v in values]
    kept = np.asarray([i >= 0 for i in found], bool)
    missing = [str(v) for v, i in zip(values, found) if i < 0]
    if missing and unknown == "error":
      raise UnknownIdError(self.kind, list(dict.fromkeys(missing)))
    return np.asarray([i for i in found if i >= 0], np.int32), kept, missing
