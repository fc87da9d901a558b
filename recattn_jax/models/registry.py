"""The model registries: encoders, pointwise models, heads and matchers, looked up by name.

    @ENCODERS.register("sasrec", objective="causal", kv_cache=True)
    class SASRec(SequenceEncoder): ...

An encoder's registration says what it trains with and what it reads:
`objective` ("causal": next item at every position; "cloze": masked items,
with an `mask_id` input), `batch_keys` (extra batch keys it reads, e.g.
("timestamps",)) and `kv_cache` (it has `prefill`/`extend`). The training
task, the data pipeline and evaluation read these instead of the name.
"""

from __future__ import annotations

from recattn_jax.registry import Registry

OBJECTIVES = ("causal", "cloze")

ENCODERS = Registry("encoder", "model.name")
# Factories (num_items, features, *, item_features, id_dropout, attention_fn, name) -> a module
# with `__call__(ids, deterministic=)` and `table(deterministic=)`.
ITEM_ENCODERS = Registry("item encoder", "model.*.item_representation")
POINTWISE_MODELS = Registry("click/rating model", "model.name")
HEADS = Registry("head", "model.*.head")
MATCHERS = Registry("matcher", "model.*.matcher")


def encoder_spec(name: str) -> dict:
  """objective, batch_keys and kv_cache of a registered encoder (with their defaults)."""
  spec = {"objective": "causal", "batch_keys": (), "kv_cache": False, **ENCODERS.spec(name)}
  if spec["objective"] not in OBJECTIVES:
    raise ValueError(f"encoder {name!r} registered with objective={spec['objective']!r}; "
                     f"choose one of {OBJECTIVES}")
  return spec
