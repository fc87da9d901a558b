"""Pretrained BERT-family checkpoints from a local folder: config, weights and tokenizer.

The folder has the usual Hugging Face layout: `config.json`, `model.safetensors`
and `tokenizer.json` (all-MiniLM-L6-v2 from `python -m recattn_jax.text.get_model
minilm`, or any BERT-family checkpoint copied from the hub). Weights are read
with `safetensors` (numpy, no torch) and renamed into `bert.BertEncoder`'s
parameters; every parameter must be found with its shape, and leftovers other
than the pooler are named, so a checkpoint of another architecture fails
loudly. Tokenisation is the checkpoint's own `tokenizers` pipeline:
deterministic, truncated to `max_length`, padded with id 0.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
from typing import Any, Sequence

import flax.traverse_util
import jax
import numpy as np

from recattn_jax.text.bert import BertConfig, BertEncoder, LoRAConfig

FILES = ("config.json", "model.safetensors", "tokenizer.json")

# Our parameter path -> the checkpoint's name ("{i}": the layer), and whether a
# Dense kernel is stored transposed (torch Linear weights are [out, in]).
_EMBEDDINGS = {
    "word_embeddings/embedding": "embeddings.word_embeddings.weight",
    "position_embeddings/embedding": "embeddings.position_embeddings.weight",
    "token_type_embeddings/embedding": "embeddings.token_type_embeddings.weight",
    "embeddings_norm/scale": "embeddings.LayerNorm.weight",
    "embeddings_norm/bias": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attention_output": "attention.output.dense", "intermediate": "intermediate.dense",
    "output": "output.dense",
}
_LAYER_NORMS = {"attention_norm": "attention.output.LayerNorm", "output_norm": "output.LayerNorm"}
_IGNORED = re.compile(r"^(pooler\.|embeddings\.position_ids$)")
# Older checkpoints name LayerNorm parameters gamma/beta.
_ALIASES = {".weight": ".gamma", ".bias": ".beta"}


class PretrainedError(ValueError):
  """A checkpoint folder is incomplete or does not fit the BERT architecture; names the file."""


@dataclasses.dataclass
class Pretrained:
  """A loaded checkpoint: the Flax module, its parameters and the tokenizer."""

  path: pathlib.Path
  config: BertConfig
  module: BertEncoder
  params: Any
  tokenizer: Any  # tokenizers.Tokenizer

  def tokenize(self, texts: Sequence[str], max_length: int = 128,
               pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int32 [n, pad_to or the longest], truncated to `max_length`."""
    return tokenize(self.tokenizer, texts, max_length=max_length, pad_to=pad_to)

  def embed(self, texts: Sequence[str], *, pooling: str = "mean", max_length: int = 128) -> np.ndarray:
    """Sentence vectors [n, H] float32 of `texts` in one batch (see `text.embed` for catalogues)."""
    ids, mask = self.tokenize(texts, max_length)
    return np.asarray(embed_step(self.module, pooling)(self.params, ids, mask))


@functools.lru_cache(maxsize=16)
def embed_step(module: BertEncoder, pooling: str):
  """One jitted (params, ids, mask) -> vectors per encoder and pooling, so shapes compile once."""
  return jax.jit(lambda params, ids, mask: module.apply(params, ids, mask, pooling, method="embed"))


def tokenize(tokenizer, texts: Sequence[str], *, max_length: int = 128,
             pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length=max_length)
  encodings = tokenizer.encode_batch([str(t) for t in texts])
  width = pad_to or max((len(e.ids) for e in encodings), default=1)
  ids = np.zeros((len(encodings), width), np.int32)
  mask = np.zeros((len(encodings), width), np.int32)
  for row, encoding in enumerate(encodings):
    if len(encoding.ids) > width:
      raise ValueError(f"text {row} has {len(encoding.ids)} tokens, more than pad_to={width}")
    ids[row, :len(encoding.ids)] = encoding.ids
    mask[row, :len(encoding.ids)] = encoding.attention_mask
  return ids, mask


def _checkpoint_names(config: BertConfig) -> dict[str, tuple[str, bool]]:
  names = {path: (name, False) for path, name in _EMBEDDINGS.items()}
  for i in range(config.num_hidden_layers):
    prefix = f"encoder.layer.{i}."
    for ours, theirs in _LAYER.items():
      names[f"layer_{i}/{ours}/kernel"] = (prefix + theirs + ".weight", True)
      names[f"layer_{i}/{ours}/bias"] = (prefix + theirs + ".bias", False)
    for ours, theirs in _LAYER_NORMS.items():
      names[f"layer_{i}/{ours}/scale"] = (prefix + theirs + ".weight", False)
      names[f"layer_{i}/{ours}/bias"] = (prefix + theirs + ".bias", False)
  return names


def _lookup(tensors: dict[str, np.ndarray], name: str) -> str | None:
  for prefix in ("", "bert."):
    if prefix + name in tensors:
      return prefix + name
    for suffix, alias in _ALIASES.items():
      if name.endswith(suffix) and prefix + name[:-len(suffix)] + alias in tensors:
        return prefix + name[:-len(suffix)] + alias
  return None


def convert_weights(tensors: dict[str, np.ndarray], config: BertConfig, module: BertEncoder,
                    source: str = "model.safetensors", seed: int = 0) -> Any:
  """`BertEncoder` parameters from a checkpoint's tensors; PretrainedError naming what does not fit."""
  ids = np.zeros((1, 2), np.int32)
  shapes = flax.traverse_util.flatten_dict(
      jax.eval_shape(module.init, jax.random.PRNGKey(0), ids, ids)["params"], sep="/")
  names = _checkpoint_names(config)
  params, used, problems = {}, set(), []
  adapters = {path for path in shapes if "_lora/" in path}
  if adapters:  # LoRA adapters are not in the checkpoint: fresh (B = 0, so the output is unchanged)
    fresh = flax.traverse_util.flatten_dict(
        jax.jit(module.init)(jax.random.PRNGKey(seed), ids, ids)["params"], sep="/")
    params.update({path: np.asarray(fresh[path]) for path in adapters})
  for path, like in shapes.items():
    if path in adapters:
      continue
    name, transposed = names[path]
    found = _lookup(tensors, name)
    if found is None:
      problems.append(f"{name} is missing")
      continue
    value = np.asarray(tensors[found], np.float32)
    value = value.T if transposed else value
    if value.shape != like.shape:
      problems.append(f"{found} has shape {value.shape}, the config needs {like.shape}")
      continue
    params[path] = value
    used.add(found)
  unused = sorted(n for n in tensors if n not in used and not _IGNORED.match(n.removeprefix("bert.")))
  if unused:
    problems.append(f"{len(unused)} tensors are not part of a BERT encoder (first: {unused[:3]})")
  if problems:
    raise PretrainedError(f"{source}: " + "; ".join(problems[:6]))
  return {"params": flax.traverse_util.unflatten_dict(params, sep="/")}


def load_pretrained(path: str | pathlib.Path, *, attention_impl: str = "xla",
                    dtype: Any = np.float32, lora: LoRAConfig = LoRAConfig(),
                    seed: int = 0) -> Pretrained:
  """The checkpoint in folder `path` (see the module docstring); `lora`: adapters added, fresh."""
  import safetensors.numpy  # pylint: disable=import-outside-toplevel  # the "text" extra
  import tokenizers  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(path)
  missing = [name for name in FILES if not (path / name).is_file()]
  if missing:
    raise PretrainedError(f"{path} is not a BERT-family checkpoint folder: {missing} missing "
                          "(`python -m recattn_jax.text.get_model minilm` fetches one)")
  try:
    config = BertConfig.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8")))
  except (ValueError, TypeError) as e:
    raise PretrainedError(f"{path / 'config.json'}: {e}") from e
  module = BertEncoder(config, attention_impl=attention_impl, dtype=dtype, lora=lora)
  try:
    tensors = safetensors.numpy.load_file(str(path / "model.safetensors"))
  except Exception as e:  # safetensors raises its own error types for damaged files
    raise PretrainedError(f"{path / 'model.safetensors'} could not be read ({e})") from e
  params = convert_weights(tensors, config, module, str(path / "model.safetensors"), seed)
  try:
    tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
  except Exception as e:  # tokenizers raises plain Exceptions
    raise PretrainedError(f"{path / 'tokenizer.json'} could not be read ({e})") from e
  return Pretrained(path, config, module, jax.tree.map(jax.numpy.asarray, params), tokenizer)
