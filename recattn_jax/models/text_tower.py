"""An item tower that runs a pretrained text encoder, with LoRA adapters, on the items' text.

The tower maps item rows to sentence vectors of their text
(`ItemFeatures.text_tokens`, tokenised once by the checkpoint's tokenizer)
through `text.BertEncoder` with low-rank adapters: the pretrained weights are
loaded into `params["text_tower"]["bert"]` after initialisation and stay
frozen (`frozen_text_weights`), the adapters train with the recommender. As B
starts at zero the tower starts at the frozen vectors `ItemFeatures.text_embeddings`.

A BERT pass per item is far dearer than a table lookup, so the tower runs only
where it must: on a training step's candidates (`losses.CandidateLoss`) and,
chunk by chunk, on the whole catalogue when it is scored (`scoring.item_table`).
History items enter the sequence encoder through the frozen vectors.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.data.features import ItemFeatures
from recattn_jax.text.bert import BertConfig, BertEncoder, LoRAConfig

TOWER_SCOPE = "text_tower"


class TextTower(nn.Module):
  """Item rows [n] -> pooled sentence vectors [n, H] of their text tokens."""

  item_features: ItemFeatures
  lora: LoRAConfig
  attention_impl: str = "xla"

  def setup(self):
    spec = self.item_features.text_encoder
    if self.item_features.text_tokens is None or spec is None:
      raise ValueError("a text tower (model.*.item_text_lora_rank > 0) needs the items' text tokens; "
                       "set data.text_model so the job tokenises the item texts")
    self.bert = BertEncoder(BertConfig.from_dict(spec["bert"]), self.attention_impl, lora=self.lora,
                            name="bert")

  def __call__(self, rows: jax.Array, deterministic: bool = True) -> jax.Array:
    ids = jnp.take(jnp.asarray(self.item_features.text_tokens), rows, axis=0)
    mask = (ids > 0).astype(jnp.int32)
    return self.bert.embed(ids, mask, self.item_features.text_encoder["pooling"],
                           deterministic=deterministic)


def _is_frozen(path) -> bool:
  names = [str(getattr(key, "key", "")) for key in path]
  return TOWER_SCOPE in names and not any(name.endswith("_lora") for name in names)


def frozen_text_weights(params) -> object:
  """True at the text tower's pretrained weights (what never trains), False elsewhere."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _is_frozen(path), params)


def stop_frozen_gradients(params):
  """`params` with the pretrained text weights behind stop_gradient, so no gradient is computed for them."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jax.lax.stop_gradient(leaf) if _is_frozen(path) else leaf, params)


def insert_pretrained(params, pretrained: dict):
  """`params` with every text tower's BERT weights replaced by `pretrained` ({"params": ...}), adapters kept.

  Raises when the model has no text tower or a pretrained weight does not fit.
  """
  found = []

  def replace(tree):
    if not isinstance(tree, dict):
      return tree
    out = {}
    for name, value in tree.items():
      if name == TOWER_SCOPE:
        found.append(name)
        value = {**value, "bert": _merge(value["bert"], pretrained["params"], "bert")}
      else:
        value = replace(value)
      out[name] = value
    return out

  params = replace(params)
  if not found:
    raise ValueError("the model has no text tower to load pretrained weights into")
  return params


def _merge(ours, theirs, where: str):
  if not isinstance(ours, dict):
    if jnp.shape(ours) != jnp.shape(theirs):
      raise ValueError(f"pretrained {where} has shape {jnp.shape(theirs)}, the tower {jnp.shape(ours)}")
    # A host copy, so the state never aliases the caller's arrays (the train step donates it).
    return jax.device_put(jnp.array(theirs, ours.dtype, copy=True), ours.sharding)
  out = {}
  for name, value in ours.items():
    if name.endswith("_lora"):
      out[name] = value
    elif name not in theirs:
      raise ValueError(f"pretrained weights lack {where}/{name}")
    else:
      out[name] = _merge(value, theirs[name], f"{where}/{name}")
  return out
