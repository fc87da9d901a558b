"""A portable scorer: encoder + scoring + top-K of a ranking bundle as a serialized `jax.export`.

`export_scorer(rec, out)` writes a folder:

  scorer.jaxexport  the serialized function (parameters inside, as constants):
                    (inputs int32 [b, max_len], exclude int32 [b, w]
                     [, timestamps float32 [b, max_len]]) -> (ids int32 [b, k], scores float32 [b, k])
                    with symbolic b and w
  signature.json    how to build the inputs (padding side, max_len, mask id, k, platforms)
  items.json        the original id of every internal item id (0 = padding)

Running it needs jax alone, not this library (`run_scorer` below shows how;
it imports nothing from recattn_jax). Models with a user context cannot be
exported: their inputs include a per-user table lookup the artifact does not carry.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from recattn_jax.evaluation.topk import top_k_items
from recattn_jax.models import scoring_users, serving_vectors
from recattn_jax.serving.lists import ITEM_CHUNK

ARTIFACT = "scorer.jaxexport"
PLATFORMS = ("cpu", "cuda")


def export_scorer(rec, out: str | pathlib.Path, *, k: int = 100,
                  platforms: tuple[str, ...] = PLATFORMS) -> pathlib.Path:
  """Writes the portable scorer of `rec` (a `Recommender`) into folder `out`; returns it.

  `k` is capped at the catalogue size.
  """
  if rec.reads_users:
    raise ValueError("a model with a user context (data.user_friends_path) cannot be exported")
  k = rec._check_k(min(k, rec.num_items))  # pylint: disable=protected-access
  model, params, table, rows = rec.model, rec.params, rec.table, rec.table_rows
  with_times = rec.reads_timestamps

  def scorer(inputs, exclude, *timestamps):
    batch = {"inputs": inputs, "exclude": exclude}
    if with_times:
      batch["timestamps"] = timestamps[0]
    scores, ids = top_k_items(scoring_users(model, serving_vectors(model, params, batch)), table, k,
                              exclude, item_chunk=ITEM_CHUNK, num_rows=rows)
    return ids, scores

  b, w = jax.export.symbolic_shape("b, w")
  args = [jax.ShapeDtypeStruct((b, rec.max_len), jnp.int32), jax.ShapeDtypeStruct((b, w), jnp.int32)]
  if with_times:
    args.append(jax.ShapeDtypeStruct((b, rec.max_len), jnp.float32))
  exported = jax.export.export(jax.jit(scorer), platforms=platforms)(*args)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / ARTIFACT).write_bytes(exported.serialize())
  signature = {
      "inputs": ["inputs", "exclude"] + (["timestamps"] if with_times else []),
      "outputs": ["ids", "scores"], "max_len": rec.max_len, "padding": rec.padding,
      "mask_id": rec.model.mask_id, "k": k, "platforms": list(exported.platforms),
      "model": rec.config.model.name, "bundle": str(rec.bundle.path.absolute()),
      "timestamps": "seconds relative to the newest event" if with_times else None,
  }
  (out / "signature.json").write_text(json.dumps(signature, indent=2), encoding="utf-8")
  (out / "items.json").write_text(json.dumps(list(rec.items.ids)), encoding="utf-8")
  return out


def run_scorer(folder: str | pathlib.Path, histories: list[list[str]]) -> list[list[str]]:
  """Top-k original ids of each history with the artifact alone (jax + numpy + json).

  The reference for callers in another process or service; tests run the
  same steps in a subprocess that never imports recattn_jax.
  """
  folder = pathlib.Path(folder)
  exported = jax.export.deserialize(bytearray((folder / ARTIFACT).read_bytes()))
  signature = json.loads((folder / "signature.json").read_text(encoding="utf-8"))
  items = json.loads((folder / "items.json").read_text(encoding="utf-8"))
  index = {item: i for i, item in enumerate(items) if i}
  length, mask_id = signature["max_len"], signature["mask_id"]
  width = max(8, max(len(h) for h in histories))
  inputs = np.zeros((len(histories), length), np.int32)
  exclude = np.zeros((len(histories), width), np.int32)
  for row, history in enumerate(histories):
    ids = [index[item] for item in history]
    exclude[row, :len(ids)] = ids
    ids = ids[-(length - 1):] + [mask_id] if mask_id is not None else ids[-length:]
    if signature["padding"] == "left":
      inputs[row, length - len(ids):] = ids
    else:
      inputs[row, :len(ids)] = ids
  ids, _ = exported.call(inputs, exclude)
  return [[items[i] for i in row if i] for row in np.asarray(ids)]
