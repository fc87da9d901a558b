"""Sharding rules: which arrays are split over which mesh axis.

A rule is (regular expression over an array's path, PartitionSpec); the first
rule whose expression matches (`re.search`) decides, and arrays no rule matches
are replicated. Paths join the keys of the pytree with "/", e.g.
`params/params/item_embed/embedding` for the item table in the train state and
`opt_state/1/0/mu/params/item_embed/embedding` for Adam's first moment of it,
so one rule shards a parameter and its optimizer state alike.

`SHARDING_RULES`, the default:
  * the item-embedding table [rows, D] of every item encoder (the input
    embedding and, tied to it, the output layer of every ranking encoder) by
    rows over "model";
  * BERT4Rec's per-item output bias [rows] by rows over "model";
  * everything else (transformer blocks, positions, small per-feature tables)
    replicated.
Batches are split by rows over "data" (`batch_sharding`). Per-item parameters
hold a multiple of `models.item_encoder.TABLE_ROW_MULTIPLE` rows, so the rules
apply to any "model" axis that divides it.
"""

from __future__ import annotations

import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from recattn_jax.parallel.mesh import DATA_AXIS, MODEL_AXIS

SHARDING_RULES: tuple[tuple[str, P], ...] = (
    (r"(^|/)item_embed/embedding$", P(MODEL_AXIS, None)),
    (r"(^|/)output_bias$", P(MODEL_AXIS)),
)


def path_name(path: tuple) -> str:
  """"a/b/0/c" for a pytree key path."""
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def shard_spec(name: str, shape: tuple[int, ...], mesh: Mesh,
               rules=SHARDING_RULES) -> P:
  """The PartitionSpec of the array at path `name`; ValueError when it cannot be split evenly."""
  for pattern, spec in rules:
    if re.search(pattern, name):
      for dim, axes in enumerate(spec):
        if axes is None:
          continue
        parts = 1
        for axis in (axes if isinstance(axes, tuple) else (axes,)):
          parts *= mesh.shape[axis]
        if dim >= len(shape) or shape[dim] % parts:
          raise ValueError(f"{name} {tuple(shape)}: sharding rule {pattern!r} -> {spec} needs "
                           f"dimension {dim} divisible by {parts} (train.mesh "
                           f"{dict(mesh.shape)})")
      return spec
  return P()


def tree_shardings(tree: Any, mesh: Mesh, rules=SHARDING_RULES) -> Any:
  """A NamedSharding for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, shard_spec(path_name(path), leaf.shape, mesh, rules)),
      tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows over "data", replicated over "model"."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
