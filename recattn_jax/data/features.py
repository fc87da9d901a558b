"""Item content features aligned with the library's internal item ids.

Rows follow the internal ids of a `SequenceData`/`Split`: row j describes item j
(original id `item_ids[j]`), row 0 is padding and always all-zero. Three kinds of
features, each optional:

  * categorical fields: int32 [N + 1], one value per item, 0 = unknown
    (e.g. ML-100K's release year);
  * token fields: int32 [N + 1, T], a set of tokens per item right-padded with 0
    (e.g. genres, title words, S3Rec's Amazon attribute ids);
  * text embeddings: float32 [N + 1, E], precomputed elsewhere (e.g. by a
    sentence encoder) and read from a `.npy` file whose rows are named by an
    ids file (see `read_text_embeddings`).

Every vocabulary is built from the catalogue's own items (cold items included:
their content is known even when their interactions are not), in sorted token
order, so the ids do not depend on file order. Items a source does not describe
get all-zero rows; `stats` counts them per source and overall.

Config fields read by `load_item_features` (all optional; "" = off):

  data.item_features_path: a RecBole `.item` file (or a folder holding one), or an
    S3Rec `*_item2attributes.json`.
  data.item_fields: comma-separated fields of the `.item` file to use ("" = all).
  data.item_max_tokens: tokens kept per item and field (longer lists are cut and
    counted; default 32).
  data.item_token_min_count: tokens on fewer items become unknown (default 1).
  data.text_embeddings_path: a `.npy` float matrix [rows, E].
  data.text_embeddings_ids_path: text file with the original item id of each row
    of that matrix, one per line (default: the `.npy` path with `.ids.txt` in
    place of `.npy`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import pathlib
import string
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from recattn_jax.data import readers
from recattn_jax.data.readers import DataFormatError

_log = logging.getLogger(__name__)

PathLike = readers.PathLike

# Name of the token field that S3Rec's attribute lists become.
ATTRIBUTES = "attributes"
TEXT = "text"
DEFAULT_MAX_TOKENS = 32

# Above this size the text matrix is worth a warning: it is baked into every
# compiled function as a constant (see `models.item_encoder.ItemEncoder`).
LARGE_CONSTANT_BYTES = 64 << 20


def _own(array, dtype) -> np.ndarray:
  """A private copy (frozen ones, e.g. from another ItemFeatures, are shared as they are)."""
  if isinstance(array, np.ndarray) and array.dtype == dtype and not array.flags.writeable:
    return array
  return np.array(array, dtype)


@dataclasses.dataclass(eq=False)
class ItemFeatures:
  """Content of every item, row j = internal item j (row 0 = padding).

  `eq=False` keeps the default identity hash, so Flax modules holding one stay
  hashable and comparing two never walks the arrays.

  Attributes:
    categorical: field -> int32 [N + 1], 0 = unknown.
    tokens: field -> int32 [N + 1, T], 0 = padding.
    vocab_sizes: field -> number of ids of that field, 0 included (an embedding
      table of this many rows covers it); one entry per categorical and token field.
    text_embeddings: float32 [N + 1, E] or None.
    text_mask: bool [N + 1], True where the item has a text embedding (derived
      from non-zero rows when not given).
    trained: bool [N + 1] or None: items with at least one training event (see
      `with_trained_items`). `ItemEncoder(representation="both")` gives the other
      items a content-only vector; None means every item counts as trained.
    text_tokens: int32 [N + 1, T] or None: token ids of each item's text (0 =
      padding), for a text encoder trained with the model (`ItemEncoder`'s
      text tower); needs `text_embeddings` (the same encoder's frozen vectors)
      and `text_encoder`.
    text_encoder: the tower's settings or None: {"bert": BertConfig fields,
      "pooling": "mean" | "cls"} (json, so a bundle rebuilds the tower).
    item_ids: original item id of each row (item_ids[0] = "<pad>"), for tracing a
      row back to its source; optional.
    stats: counts of what was read, missing or cut, for logs and results.json.
  """

  categorical: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  tokens: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  vocab_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
  text_embeddings: np.ndarray | None = None
  text_mask: np.ndarray | None = None
  trained: np.ndarray | None = None
  text_tokens: np.ndarray | None = None
  text_encoder: dict | None = None
  item_ids: np.ndarray | None = None
  stats: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.categorical = {k: _own(v, np.int32) for k, v in self.categorical.items()}
    self.tokens = {k: _own(v, np.int32) for k, v in self.tokens.items()}
    if self.text_embeddings is not None:
      self.text_embeddings = _own(self.text_embeddings, np.float32)
      if self.text_mask is None:
        self.text_mask = np.any(self.text_embeddings != 0, axis=1)
    if self.text_mask is not None:
      self.text_mask = _own(self.text_mask, bool)
    if self.trained is not None:
      self.trained = _own(self.trained, bool)
    if self.text_tokens is not None:
      self.text_tokens = _own(self.text_tokens, np.int32)
    self._validate()
    # Compiled functions capture these arrays as constants; an in-place edit
    # afterwards would silently diverge from them.
    for _, _, array in self._arrays():
      array.setflags(write=False)
    for array in (self.text_mask, self.trained, self.text_tokens):
      if array is not None:
        array.setflags(write=False)

  @property
  def num_rows(self) -> int:
    """N + 1 (items and the padding row)."""
    for arrays in (self.categorical, self.tokens):
      for array in arrays.values():
        return len(array)
    if self.text_embeddings is not None:
      return len(self.text_embeddings)
    if self.item_ids is not None:
      return len(self.item_ids)
    raise ValueError("ItemFeatures has no fields, so its number of items is unknown")

  @property
  def num_items(self) -> int:
    return self.num_rows - 1

  @property
  def fields(self) -> list[str]:
    """Categorical then token fields, in a fixed order (the encoder's field ids)."""
    return sorted(self.categorical) + sorted(self.tokens)

  @property
  def is_empty(self) -> bool:
    return not self.categorical and not self.tokens and self.text_embeddings is None

  def has_content(self) -> np.ndarray:
    """bool [N + 1]: the item has at least one known feature."""
    out = np.zeros(self.num_rows, bool)
    for values in self.categorical.values():
      out |= values > 0
    for values in self.tokens.values():
      out |= np.any(values > 0, axis=1)
    if self.text_mask is not None:
      out |= self.text_mask
    out[0] = False
    return out

  def with_trained_items(self, train_sequences: Iterable[np.ndarray], *,
                         drop_untrained_tokens: bool = True) -> "ItemFeatures":
    """A copy whose `trained` marks the items that occur in `train_sequences`.

    With `drop_untrained_tokens`, a categorical value or token that only items
    without training events carry becomes unknown (0): in a softmax over the
    catalogue its embedding could only learn "never the answer", the same fact
    about the training window that makes a cold item's id row useless (and it
    would sink exactly the items content is meant to rescue). Counted in
    `stats["untrained_tokens"]` per field.
    """
    trained = np.zeros(self.num_rows, bool)
    for sequence in train_sequences:
      sequence = np.asarray(sequence)
      if sequence.size and (sequence.min() < 0 or sequence.max() >= self.num_rows):
        raise ValueError(f"training sequence holds item id {int(sequence.max())} outside "
                         f"1..{self.num_items} of these features")
      trained[sequence] = True
    trained[0] = False
    stats = {**self.stats, "trained_items": int(trained.sum()),
             "untrained_items": int(self.num_items - trained.sum())}
    categorical, tokens = dict(self.categorical), dict(self.tokens)
    if drop_untrained_tokens:
      dropped = {}
      for arrays in (categorical, tokens):
        for name, values in arrays.items():
          known = np.zeros(self.vocab_sizes[name], bool)
          known[values[trained].ravel()] = True
          known[0] = True
          arrays[name] = np.where(known[values], values, 0)
          dropped[name] = int(np.count_nonzero(np.bincount(values.ravel(), minlength=len(known))
                                               * ~known))
      stats["untrained_tokens"] = dropped
    return dataclasses.replace(self, categorical=categorical, tokens=tokens, trained=trained,
                               stats=stats)

  def check_aligned(self, num_items: int, where: str = "ItemFeatures") -> None:
    """Raises unless every array has num_items + 1 rows."""
    if self.is_empty:
      raise ValueError(f"{where}: item features have no fields")
    if self.num_rows != num_items + 1:
      raise ValueError(f"{where}: item features have {self.num_rows} rows but the model has "
                       f"num_items={num_items} (expects {num_items + 1} rows, row 0 = padding); "
                       "were they built for another split?")

  def _validate(self) -> None:
    rows = None
    for kind, name, array in self._arrays():
      if rows is None:
        rows = len(array)
      if len(array) != rows:
        raise ValueError(f"ItemFeatures: {kind} {name!r} has {len(array)} rows, others {rows}")
      if len(array) and np.any(array[0] != 0):
        raise ValueError(f"ItemFeatures: {kind} {name!r}: row 0 (padding) must be all zero")
    for name, values in self.categorical.items():
      if values.ndim != 1:
        raise ValueError(f"ItemFeatures: categorical {name!r} must be [N + 1], got {values.shape}")
    for name, values in self.tokens.items():
      if values.ndim != 2:
        raise ValueError(f"ItemFeatures: token field {name!r} must be [N + 1, T], got {values.shape}")
    for name, values in {**self.categorical, **self.tokens}.items():
      if name not in self.vocab_sizes:
        raise ValueError(f"ItemFeatures: field {name!r} has no vocab_sizes entry")
      if values.size and (values.min() < 0 or values.max() >= self.vocab_sizes[name]):
        raise ValueError(f"ItemFeatures: field {name!r} holds ids in [{values.min()}, "
                         f"{values.max()}] but vocab_sizes[{name!r}]={self.vocab_sizes[name]}")
    overlap = set(self.categorical) & set(self.tokens)
    if overlap:
      raise ValueError(f"ItemFeatures: fields {sorted(overlap)} are both categorical and tokens")
    if self.text_embeddings is not None:
      if self.text_embeddings.ndim != 2:
        raise ValueError(f"ItemFeatures: text_embeddings must be [N + 1, E], got "
                         f"{self.text_embeddings.shape}")
      if not np.all(np.isfinite(self.text_embeddings)):
        raise ValueError("ItemFeatures: text_embeddings hold NaN or inf")
    if self.text_mask is not None and self.text_embeddings is None:
      raise ValueError("ItemFeatures: text_mask without text_embeddings")
    if self.text_mask is not None and len(self.text_mask) != len(self.text_embeddings):
      raise ValueError("ItemFeatures: text_mask and text_embeddings differ in rows")
    if self.text_mask is not None and self.text_mask[0]:
      raise ValueError("ItemFeatures: text_mask[0] (padding) must be False")
    if self.text_tokens is not None:
      if self.text_embeddings is None or self.text_encoder is None:
        raise ValueError("ItemFeatures: text_tokens need text_embeddings and text_encoder")
      if self.text_tokens.ndim != 2 or len(self.text_tokens) != len(self.text_embeddings):
        raise ValueError(f"ItemFeatures: text_tokens must be [N + 1, T] like text_embeddings' "
                         f"{len(self.text_embeddings)} rows, got {self.text_tokens.shape}")
      if np.any(self.text_tokens[0] != 0):
        raise ValueError("ItemFeatures: text_tokens row 0 (padding) must be all zero")
    if self.item_ids is not None and rows is not None and len(self.item_ids) != rows:
      raise ValueError(f"ItemFeatures: item_ids has {len(self.item_ids)} entries, arrays {rows} rows")
    if self.trained is not None and rows is not None and len(self.trained) != rows:
      raise ValueError(f"ItemFeatures: trained has {len(self.trained)} entries, arrays {rows} rows")

  def _arrays(self):
    for name, values in self.categorical.items():
      yield "categorical", name, values
    for name, values in self.tokens.items():
      yield "token field", name, values
    if self.text_embeddings is not None:
      yield "text", TEXT, self.text_embeddings

  def nbytes(self) -> int:
    return sum(array.nbytes for _, _, array in self._arrays())


# ----------------------------------------------------------------------------
# Building aligned arrays from per-item values.


def _row_index(item_ids: Sequence[str]) -> dict[str, int]:
  ids = [str(i) for i in item_ids]
  if len(ids) < 1 or ids[0] != "<pad>":
    raise ValueError("item_ids must be SequenceData.item_ids / Split.item_ids "
                     "(internal id -> original id, with '<pad>' at 0)")
  return {item: row for row, item in enumerate(ids) if row > 0}


def _vocabulary(values: Iterable[str], min_count: int) -> dict[str, int]:
  """Token -> id (1-based, sorted by token), for tokens on at least min_count items."""
  counts = collections.Counter(values)
  kept = sorted(t for t, c in counts.items() if c >= min_count)
  return {token: i + 1 for i, token in enumerate(kept)}


def categorical_field(values: Mapping[str, str], rows: Mapping[str, int], num_rows: int, *,
                      min_count: int = 1) -> tuple[np.ndarray, int, dict]:
  """Original id -> value, as int32 [num_rows] (0 = unknown), its vocab size and stats."""
  present = {item: value for item, value in values.items()
             if item in rows and value not in ("", None)}
  vocab = _vocabulary(present.values(), min_count)
  out = np.zeros(num_rows, np.int32)
  for item, value in present.items():
    out[rows[item]] = vocab.get(value, 0)
  return out, len(vocab) + 1, {"vocab": len(vocab), "items_with_value": int((out > 0).sum())}


def token_field(values: Mapping[str, Sequence[str]], rows: Mapping[str, int], num_rows: int, *,
                max_tokens: int = DEFAULT_MAX_TOKENS,
                min_count: int = 1) -> tuple[np.ndarray, int, dict]:
  """Original id -> token list, as int32 [num_rows, T] (0 = padding), vocab size and stats.

  Repeated tokens of one item are kept once (the encoder pools a set); T is the
  longest kept list, at most `max_tokens` (the rest are cut and counted).
  """
  if max_tokens < 1:
    raise ValueError(f"data.item_max_tokens must be >= 1, got {max_tokens}")
  present = {item: list(dict.fromkeys(t for t in tokens if t))
             for item, tokens in values.items() if item in rows}
  vocab = _vocabulary((t for tokens in present.values() for t in tokens), min_count)
  coded = {item: [vocab[t] for t in tokens if t in vocab] for item, tokens in present.items()}
  width = min(max((len(c) for c in coded.values()), default=0), max_tokens)
  out = np.zeros((num_rows, max(width, 1)), np.int32)
  cut = 0
  for item, ids in coded.items():
    cut += max(len(ids) - max_tokens, 0)
    ids = ids[:max_tokens]
    out[rows[item], :len(ids)] = ids
  stats = {"vocab": len(vocab), "items_with_tokens": int(np.any(out > 0, axis=1).sum()),
           "width": int(out.shape[1]), "tokens_cut": cut}
  return out, len(vocab) + 1, stats


def _normalise(token: str) -> str:
  return token.lower().strip(string.punctuation)


# ----------------------------------------------------------------------------
# Sources.


def from_recbole_item(path: PathLike, item_ids: Sequence[str], *,
                      fields: Sequence[str] | None = None, item_field: str = "item_id",
                      max_tokens: int = DEFAULT_MAX_TOKENS, min_count: int = 1,
                      normalise: bool = True) -> ItemFeatures:
  """Features from a RecBole `.item` file (e.g. ML-100K's), aligned with `item_ids`.

  `token` fields become categorical fields, `token_seq` fields token fields
  (ML-100K: release_year -> categorical; movie_title -> title words, class ->
  genres). With `normalise`, sequence tokens are lower-cased and stripped of
  surrounding punctuation, so "Story" and "story," share an id. `float` fields are
  not used (listed in stats as `skipped_fields`).

  Args:
    path: the `.item` file or a folder holding exactly one.
    item_ids: `Split.item_ids` (internal id -> original id).
    fields: fields to use (default: every token/token_seq field).
    item_field, max_tokens, min_count: see the module docstring.
    normalise: lower-case and strip punctuation in token_seq fields.
  """
  path = readers._single_file(pathlib.Path(path), ".item")
  kinds = {name: kind for name, kind in readers._recbole_header(path) if name != item_field}
  frame = readers.read_recbole_item_features(path, item_field=item_field)
  rows = _row_index(item_ids)
  num_rows = len(rows) + 1
  names = list(kinds)
  if fields:
    unknown = [f for f in fields if f not in kinds]
    if unknown:
      raise DataFormatError(f"{path}: no field {unknown[0]!r} (data.item_fields); has {names}")
    names = list(fields)
  categorical, tokens, vocab_sizes, field_stats, skipped = {}, {}, {}, {}, []
  for name in names:
    column = frame[name]
    if kinds[name] == "token_seq":
      per_item = {item: [_normalise(t) if normalise else t for t in value]
                  for item, value in zip(frame.index, column)}
      tokens[name], vocab_sizes[name], field_stats[name] = token_field(
          per_item, rows, num_rows, max_tokens=max_tokens, min_count=min_count)
    elif kinds[name] == "token":
      categorical[name], vocab_sizes[name], field_stats[name] = categorical_field(
          dict(zip(frame.index, column)), rows, num_rows, min_count=min_count)
    else:
      skipped.append(name)  # float, float_seq: no encoder for numbers yet
  if not categorical and not tokens:
    raise DataFormatError(f"{path}: no token or token_seq field to use (fields {names})")
  known = set(frame.index)
  stats = {"source": str(path), "fields": field_stats, "skipped_fields": skipped,
           "items_not_in_file": sum(1 for item in rows if item not in known),
           "file_items_not_in_catalogue": sum(1 for item in known if item not in rows)}
  return _finish(ItemFeatures(categorical=categorical, tokens=tokens, vocab_sizes=vocab_sizes,
                              item_ids=np.asarray(item_ids, object), stats=stats))


def from_item_attributes_json(path: PathLike, item_ids: Sequence[str], *,
                              max_tokens: int = DEFAULT_MAX_TOKENS,
                              min_count: int = 1) -> ItemFeatures:
  """Features from S3Rec's `*_item2attributes.json`: one token field, `attributes`."""
  attributes = readers.read_item_attributes_json(path)
  rows = _row_index(item_ids)
  per_item = {item: [str(a) for a in values] for item, values in attributes.items()}
  values, size, field_stats = token_field(per_item, rows, len(rows) + 1, max_tokens=max_tokens,
                                          min_count=min_count)
  stats = {"source": str(path), "fields": {ATTRIBUTES: field_stats},
           "items_not_in_file": sum(1 for item in rows if item not in attributes),
           "file_items_not_in_catalogue": sum(1 for item in attributes if item not in rows)}
  return _finish(ItemFeatures(tokens={ATTRIBUTES: values}, vocab_sizes={ATTRIBUTES: size},
                              item_ids=np.asarray(item_ids, object), stats=stats))


def default_ids_path(npy_path: PathLike) -> pathlib.Path:
  """`emb.npy` -> `emb.ids.txt`: where the row ids of a text-embedding matrix live by default."""
  path = pathlib.Path(npy_path)
  return path.with_name(path.stem + ".ids.txt")


def read_text_embeddings(path: PathLike, item_ids: Sequence[str], *,
                         ids_path: PathLike | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
  """A `.npy` float matrix [rows, E] aligned to `item_ids` by its ids file.

  The ids file (default `default_ids_path(path)`) holds the original item id of
  each matrix row, one per line, in row order; there is deliberately no
  positional fallback, since a matrix saved in another id order would be silently
  misaligned. Ids outside the catalogue are skipped and counted; catalogue items
  without a row get zeros.

  Returns:
    float32 [N + 1, E], bool [N + 1] (has a row), stats.
  """
  path = pathlib.Path(path)
  ids_path = pathlib.Path(ids_path) if ids_path else default_ids_path(path)
  if not path.is_file():
    raise FileNotFoundError(f"data.text_embeddings_path={str(path)!r} does not exist")
  if not ids_path.is_file():
    raise FileNotFoundError(
        f"{path}: the row ids file {str(ids_path)!r} does not exist; write the original "
        "item id of each row there, one per line (or set data.text_embeddings_ids_path)")
  try:
    matrix = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise DataFormatError(f"{path}: not a plain .npy array ({e})") from None
  if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
    raise DataFormatError(f"{path}: expected a 2-D float matrix, got {matrix.dtype} {matrix.shape}")
  lines = ids_path.read_text(encoding="utf-8").splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  ids = [line.strip() for line in lines]
  if len(ids) != len(matrix):
    raise DataFormatError(f"{ids_path}: {len(ids)} ids for the {len(matrix)} rows of {path}")
  seen: dict[str, int] = {}
  for line, item in enumerate(ids, start=1):
    if not item:
      raise DataFormatError(f"{ids_path}, line {line}: empty item id")
    if item in seen:
      raise DataFormatError(f"{ids_path}, line {line}: item id {item!r} repeats line {seen[item]}")
    seen[item] = line
  bad = np.flatnonzero(~np.all(np.isfinite(matrix), axis=1))
  if bad.size:
    raise DataFormatError(f"{path}: row {bad[0]} (item {ids[bad[0]]!r}) has NaN or inf")
  rows = _row_index(item_ids)
  out = np.zeros((len(rows) + 1, matrix.shape[1]), np.float32)
  mask = np.zeros(len(rows) + 1, bool)
  for source_row, item in enumerate(ids):
    row = rows.get(item)
    if row is not None:
      out[row] = matrix[source_row]
      mask[row] = True
  stats = {"source": str(path), "dim": int(matrix.shape[1]),
           "items_with_text": int(mask.sum()), "items_without_text": int(len(rows) - mask.sum()),
           "file_items_not_in_catalogue": int(len(ids) - mask.sum())}
  return out, mask, stats


def _finish(features: ItemFeatures) -> ItemFeatures:
  has = features.has_content()
  features.stats["items"] = features.num_items
  features.stats["items_without_features"] = int(features.num_items - has[1:].sum())
  return features


def _merge(a: ItemFeatures | None, b: ItemFeatures) -> ItemFeatures:
  if a is None:
    return b
  clash = set(a.fields) & set(b.fields)
  if clash:
    raise ValueError(f"item feature fields {sorted(clash)} come from two sources")
  return ItemFeatures(categorical={**a.categorical, **b.categorical},
                      tokens={**a.tokens, **b.tokens},
                      vocab_sizes={**a.vocab_sizes, **b.vocab_sizes},
                      text_embeddings=b.text_embeddings if b.text_embeddings is not None
                      else a.text_embeddings,
                      text_mask=b.text_mask if b.text_mask is not None else a.text_mask,
                      item_ids=a.item_ids, stats={**a.stats, **b.stats})


def _config_get(config: Any, name: str, default: Any) -> Any:
  value = config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)
  return default if value is None else value


def load_item_features(data_config: Any, item_ids: Sequence[str], *,
                       train: Iterable[np.ndarray] | None = None) -> ItemFeatures | None:
  """Item features for a split, from the `data` config section (see the module docstring).

  Args:
    data_config: the `data` section; the fields are optional (missing = off).
    item_ids: `Split.item_ids`, so that rows follow the split's internal ids.
    train: `Split.train`; marks the items that have training events (`trained`),
      which `ItemEncoder(representation="both")` needs to treat cold items right.

  Returns:
    the features, or None when no source is configured. Logs how many items have
    no features at all (`stats["items_without_features"]`).
  """
  features_path = _config_get(data_config, "item_features_path", "")
  text_path = _config_get(data_config, "text_embeddings_path", "")
  if not features_path and not text_path:
    return None
  max_tokens = int(_config_get(data_config, "item_max_tokens", DEFAULT_MAX_TOKENS))
  min_count = int(_config_get(data_config, "item_token_min_count", 1))
  features = None
  if features_path:
    path = pathlib.Path(features_path).expanduser()
    if not path.exists():
      raise FileNotFoundError(f"data.item_features_path={str(path)!r} does not exist")
    if path.suffix.lower() == ".json":
      features = from_item_attributes_json(path, item_ids, max_tokens=max_tokens,
                                           min_count=min_count)
    elif path.is_dir() or path.suffix.lower() == ".item":
      fields = [f.strip() for f in str(_config_get(data_config, "item_fields", "")).split(",")
                if f.strip()]
      features = from_recbole_item(path, item_ids, fields=fields or None,
                                   max_tokens=max_tokens, min_count=min_count)
    else:
      raise DataFormatError(f"{path}: data.item_features_path must be a RecBole .item file (or "
                            "a folder holding one) or an S3Rec *_item2attributes.json")
  if text_path:
    ids_path = _config_get(data_config, "text_embeddings_ids_path", "") or None
    matrix, mask, stats = read_text_embeddings(pathlib.Path(text_path).expanduser(), item_ids,
                                               ids_path=ids_path)
    text = ItemFeatures(text_embeddings=matrix, text_mask=mask,
                        item_ids=np.asarray(item_ids, object), stats={"text": stats})
    features = _merge(features, text)
  features = _finish(features)
  if train is not None:
    features = features.with_trained_items(train)
  size = features.nbytes()
  if size > LARGE_CONSTANT_BYTES:
    _log.warning("item features take %.0f MiB; the item encoder bakes them into every compiled "
                 "function as constants (see ItemEncoder)", size / 2**20)
  _log.info("item features: %d of %d items have none", features.stats["items_without_features"],
            features.num_items)
  return features
