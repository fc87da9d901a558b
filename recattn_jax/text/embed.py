"""Item texts -> an `[items, H]` embedding matrix, in length-bucketed batches, cached on disk.

`embed_texts` sorts the texts by token count and cuts the sorted list into
batches padded only to their own longest text (rounded up to a multiple of 8,
so few shapes compile); with `bucket=False` every batch is padded to
`max_length`. Either way each text's vector is the same (padding is masked).

`cached_embeddings` keys the matrix by everything that changes it: the SHA256
of the checkpoint's files, the texts in order, the pooling and `max_length`.
It writes `<key>.npy` and `<key>.ids.txt` (the format `data.text_embeddings_path`
reads) through temporary files renamed into place, so a crash never leaves a
partial matrix, and a later call with the same inputs reads them back instead
of embedding again; changed text or another model gives another key, never a
stale matrix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Sequence

import numpy as np
from tqdm import tqdm

from recattn_jax.text.pretrained import FILES, Pretrained, embed_step

log = logging.getLogger(__name__)
_LENGTH_MULTIPLE = 8


def default_cache_dir() -> pathlib.Path:
  """`$RECATTN_EMBEDDING_DIR`, else `~/.cache/recattn_jax/embeddings`."""
  return pathlib.Path(os.environ.get("RECATTN_EMBEDDING_DIR")
                      or pathlib.Path.home() / ".cache" / "recattn_jax" / "embeddings")


def embed_texts(model: Pretrained, texts: Sequence[str], *, batch_size: int = 64,
                max_length: int = 128, pooling: str = "mean", bucket: bool = True,
                progress: bool = True) -> np.ndarray:
  """[len(texts), H] float32 sentence vectors, in the order of `texts`."""
  ids, mask = model.tokenize(texts, max_length=max_length, pad_to=max_length)
  lengths = mask.sum(axis=1)
  order = np.argsort(lengths, kind="stable") if bucket else np.arange(len(texts))
  step = embed_step(model.module, pooling)
  out = np.zeros((len(texts), model.config.hidden_size), np.float32)
  for start in tqdm(range(0, len(texts), batch_size), desc="embedding", unit="batch",
                    disable=not progress, mininterval=2.0):
    rows = order[start:start + batch_size]
    width = max_length
    if bucket:
      width = min(max_length, -(-max(int(lengths[rows].max()), 1) // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE)
    batch_ids = np.zeros((batch_size, width), np.int32)  # full batches: one shape per width
    batch_mask = np.zeros((batch_size, width), np.int32)
    batch_ids[:len(rows)] = ids[rows, :width]
    batch_mask[:len(rows)] = mask[rows, :width]
    out[rows] = np.asarray(step(model.params, batch_ids, batch_mask))[:len(rows)]
  return out


def embedding_key(model: Pretrained, texts: Sequence[str], *, pooling: str, max_length: int) -> str:
  """A hash of the checkpoint's files, the texts, the pooling and `max_length`."""
  digest = hashlib.sha256()
  for name in FILES:
    with open(model.path / name, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  digest.update(json.dumps({"pooling": pooling, "max_length": max_length}).encode())
  for text in texts:
    digest.update(str(text).encode("utf-8") + b"\0")
  return digest.hexdigest()[:32]


def cached_embeddings(model: Pretrained, item_ids: Sequence[str], texts: Sequence[str], *,
                      cache_dir: str | pathlib.Path | None = None, pooling: str = "mean",
                      max_length: int = 128, batch_size: int = 64,
                      bucket: bool = True) -> pathlib.Path:
  """The `.npy` of `texts`' vectors (rows named by `item_ids` in its `.ids.txt`), embedded once."""
  if len(item_ids) != len(texts):
    raise ValueError(f"{len(item_ids)} item ids for {len(texts)} texts")
  cache_dir = pathlib.Path(cache_dir or default_cache_dir())
  key = embedding_key(model, texts, pooling=pooling, max_length=max_length)
  matrix, ids_file = cache_dir / f"{key}.npy", cache_dir / f"{key}.ids.txt"
  if matrix.is_file() and ids_file.is_file():
    try:
      shape = np.load(matrix, mmap_mode="r").shape
    except (ValueError, OSError) as e:  # truncated or not an .npy
      shape = f"unreadable ({e})"
    ids_match = ids_file.read_text(encoding="utf-8").splitlines() == list(map(str, item_ids))
    if shape == (len(texts), model.config.hidden_size) and ids_match:
      log.info("item text embeddings: reusing %s", matrix)
      return matrix
    log.warning("%s is damaged (shape %s, ids %s); embedding again", matrix, shape,
                "match" if ids_match else "differ")
  cache_dir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  vectors = embed_texts(model, texts, batch_size=batch_size, max_length=max_length,
                        pooling=pooling, bucket=bucket)
  log.info("embedded %d item texts in %.1f s (%.0f items/s)", len(texts),
           time.perf_counter() - start, len(texts) / max(time.perf_counter() - start, 1e-9))
  # The ids first, the matrix last: a matrix on disk always has its ids beside it.
  tmp_ids = ids_file.with_suffix(f".tmp{os.getpid()}")
  tmp_ids.write_text("".join(f"{i}\n" for i in item_ids), encoding="utf-8")
  os.replace(tmp_ids, ids_file)
  tmp_matrix = cache_dir / f"{key}.tmp{os.getpid()}.npy"
  np.save(tmp_matrix, vectors)
  os.replace(tmp_matrix, matrix)
  return matrix
