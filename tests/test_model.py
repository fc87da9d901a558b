"""SASRec encoder: shapes, causal masking, padding invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.attention import MaskSpec
from recattn_jax.data.pipeline import pad_to
from recattn_jax.models import SASRec, last_hidden, positions_in_sequence, serving_vectors, user_vectors
from recattn_jax.models.transformer import TransformerBlock
from tests.helpers import make_encoder


def make_model(positions="start", max_len=12, **fields):
  return make_encoder("sasrec", num_items=40, max_len=max_len, embed_dim=16, num_heads=2,
                      ff_dim=32, positions=positions, **fields)


def test_output_shapes_and_padding_zeroed_before_final_norm():
  model = make_model()
  items = jnp.array([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1] * 12])
  params = model.init(jax.random.key(0), items)
  hidden = model.apply(params, items)
  assert hidden.shape == (2, 12, 16)
  assert model.apply(params, method=model.item_embeddings).shape == (41, 16)
  assert np.all(np.isfinite(hidden))


@pytest.mark.parametrize("positions", ["start", "end"])
def test_future_items_never_change_earlier_outputs(positions):
  """Causality at the level of the model: a later event can't leak into an earlier position.

  With positions counted from the end, appending shifts every position, so that
  variant is checked by changing (not appending) the last event.
  """
  model = make_model(positions)
  rng = np.random.default_rng(0)
  items = rng.integers(1, 41, size=(3, 12))
  params = model.init(jax.random.key(1), jnp.asarray(items))
  changed = items.copy()
  changed[:, 7:] = rng.integers(1, 41, size=(3, 5))
  a = model.apply(params, jnp.asarray(items))
  b = model.apply(params, jnp.asarray(changed))
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-5)
  assert not np.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def test_left_and_right_padding_give_the_same_user_representation():
  model = make_model("start")
  seqs = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [9]]
  left = np.zeros((3, 12), np.int32)
  right = np.zeros((3, 12), np.int32)
  for i, s in enumerate(seqs):
    left[i, 12 - len(s):] = s
    right[i, :len(s)] = s
  params = model.init(jax.random.key(2), jnp.asarray(left))
  users_left = last_hidden(model.apply(params, jnp.asarray(left)), jnp.asarray(left))
  users_right = last_hidden(model.apply(params, jnp.asarray(right)), jnp.asarray(right))
  np.testing.assert_allclose(users_left, users_right, atol=1e-5)


def test_more_padding_does_not_change_outputs():
  short, long_ = make_model(max_len=6), make_model(max_len=12)
  items = jnp.array([[0, 0, 1, 2, 3, 4]])
  params = long_.init(jax.random.key(3), jnp.zeros((1, 12), jnp.int32))
  padded = jnp.pad(items, ((0, 0), (6, 0)))
  short_pos = {"embedding": params["params"]["pos_embed"]["embedding"][:6]}
  a = short.apply({"params": params["params"] | {"pos_embed": short_pos}}, items)
  b = long_.apply(params, padded)
  np.testing.assert_allclose(a, b[:, 6:], atol=1e-5)


def test_positions_ignore_padding_side_and_restart_per_segment():
  segments = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 2, 3, 3]])
  np.testing.assert_array_equal(positions_in_sequence(segments, "start"),
                                [[0, 0, 0, 1, 2], [0, 1, 2, 0, 0], [0, 1, 0, 0, 1]])
  np.testing.assert_array_equal(positions_in_sequence(segments, "end"),
                                [[0, 0, 2, 1, 0], [2, 1, 0, 0, 0], [1, 0, 0, 1, 0]])


@pytest.mark.parametrize("positions", ["start", "end"])
def test_packed_rows_give_each_user_its_padded_outputs(positions):
  model = make_model(positions)
  users = [[3, 4, 5], [7, 8, 9, 10, 11], [2, 6]]
  packed = np.array([sum(users, []) + [0, 0]])
  segments = np.array([[1] * 3 + [2] * 5 + [3] * 2 + [0, 0]])
  params = model.init(jax.random.key(4), jnp.asarray(packed))
  out = model.apply(params, jnp.asarray(packed), jnp.asarray(segments))
  offset = 0
  for user in users:
    alone = np.zeros((1, 12), np.int32)
    alone[0, 12 - len(user):] = user
    expected = model.apply(params, jnp.asarray(alone))[0, 12 - len(user):]
    np.testing.assert_allclose(out[0, offset:offset + len(user)], expected, atol=1e-5)
    offset += len(user)


def test_too_long_input_is_a_clear_error():
  model = make_model(max_len=4)
  with pytest.raises(ValueError, match="max_len=4"):
    model.init(jax.random.key(0), jnp.ones((1, 5), jnp.int32))


def _np_layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_gelu(x):  # flax's default, the tanh approximation
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _np_block(x, p, residual):
  """A plain numpy transformer block (causal, no dropout), the two residual layouts spelled out."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  attn = p["attention"]
  normed = _np_layer_norm(x, p["attention_norm"])
  kv_input = x if residual == "normed" else normed
  q = np.einsum("bld,dhk->blhk", normed, attn["qkv"]["kernel"][:, 0]) + attn["qkv"]["bias"][0]
  k = np.einsum("bld,dhk->blhk", kv_input, attn["qkv"]["kernel"][:, 1]) + attn["qkv"]["bias"][1]
  v = np.einsum("bld,dhk->blhk", kv_input, attn["qkv"]["kernel"][:, 2]) + attn["qkv"]["bias"][2]
  logits = np.einsum("bqhk,bphk->bhqp", q, k) / np.sqrt(q.shape[-1])
  length = x.shape[1]
  logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  heads = np.einsum("bhqp,bphk->bqhk", weights, v)
  h = np.einsum("bqhk,hkd->bqd", heads, attn["out"]["kernel"]) + attn["out"]["bias"]
  x = (normed if residual == "normed" else x) + h
  normed = _np_layer_norm(x, p["ff_norm"])
  ff = p["ff"]
  hidden = _np_gelu(normed @ ff["Dense_0"]["kernel"] + ff["Dense_0"]["bias"])
  return (normed if residual == "normed" else x) + hidden @ ff["Dense_1"]["kernel"] + ff["Dense_1"]["bias"]


@pytest.mark.parametrize("residual", ["input", "normed"])
def test_transformer_block_matches_a_numpy_block_with_its_gradient(residual):
  block = TransformerBlock(8, 2, 16, 0.0, residual=residual)
  x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
  valid = jnp.ones((2, 5), bool)
  mask = MaskSpec(causal=True, kv_valid=valid)
  params = block.init(jax.random.key(0), x, mask, valid, True)
  out = block.apply(params, x, mask, valid, True)[0]
  np.testing.assert_allclose(out, _np_block(x.astype(np.float64), params["params"], residual),
                             atol=2e-5)
  # The gradient with respect to the input, against central differences of the numpy block.
  direction = np.random.default_rng(1).normal(size=x.shape)
  grad = jax.grad(lambda x: jnp.sum(block.apply(params, x, mask, valid, True)[0] ** 2))(x)
  step = 1e-4
  loss = lambda x: np.sum(_np_block(x, params["params"], residual) ** 2)
  numeric = (loss(x + step * direction) - loss(x - step * direction)) / (2 * step)
  np.testing.assert_allclose(np.sum(np.asarray(grad, np.float64) * direction), numeric, rtol=1e-3)


def test_residual_layouts_differ_and_an_unknown_one_is_named():
  items = jnp.array([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
  params = make_model().init(jax.random.key(0), items)
  assert not np.allclose(make_model().apply(params, items),
                         make_model(residual="normed").apply(params, items), atol=1e-3)
  with pytest.raises(ValueError, match="model.*residual.*'post'"):
    make_model(residual="post").init(jax.random.key(0), items)


@pytest.mark.parametrize("residual", ["input", "normed"])
def test_cached_extension_equals_full_recomputation(residual):
  model = make_model("start", max_len=12, residual=residual)
  rng = np.random.default_rng(5)
  lengths = [1, 4, 7]
  events = rng.integers(1, 41, size=(3, 11))
  params = model.init(jax.random.key(6), jnp.zeros((3, 12), jnp.int32))
  history = np.zeros((3, 8), np.int32)
  for row, n in enumerate(lengths):
    history[row, :n] = events[row, :n]
  users, cache = model.apply(params, jnp.asarray(history), method=model.prefill)
  extend = jax.jit(lambda c, x: model.apply(params, c, x, method=model.extend))
  for t in range(4):
    new = np.array([events[row, n + t] for row, n in enumerate(lengths)])
    users, cache = extend(cache, jnp.asarray(new))
    full = np.zeros((3, 12), np.int32)
    for row, n in enumerate(lengths):
      full[row, :n + t + 1] = events[row, :n + t + 1]
    expected = last_hidden(model.apply(params, jnp.asarray(full)), jnp.asarray(full))
    np.testing.assert_allclose(users, expected, atol=1e-5)
  np.testing.assert_array_equal(cache["length"], np.array(lengths) + 4)


def test_cache_refuses_positions_counted_from_the_end():
  model = make_model("end")
  params = model.init(jax.random.key(0), jnp.ones((1, 12), jnp.int32))
  with pytest.raises(ValueError, match="positions='start'"):
    model.apply(params, jnp.ones((1, 3), jnp.int32), method=model.prefill)


def test_bfloat16_compute_keeps_float32_parameters_and_matches():
  fp32 = make_model("end")
  bf16 = make_model("end", dtype="bfloat16")
  items = jnp.asarray(np.random.default_rng(0).integers(0, 41, size=(4, 12)))
  params = fp32.init(jax.random.key(0), items)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16.init(jax.random.key(0), items)))
  low = bf16.apply(params, items)
  assert low.dtype == jnp.bfloat16
  high = fp32.apply(params, items)
  rel = np.linalg.norm(np.asarray(low, np.float32) - high) / np.linalg.norm(high)
  assert rel < 3e-2


@pytest.mark.parametrize("residual", ["input", "normed"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_sasrec_newest_hidden_equals_the_full_pass_at_the_newest_event(padding, residual):
  """Serving runs SASRec's last block at the newest event only (`serving_vectors`)."""
  model = SASRec(num_items=40, max_len=10, embed_dim=16, num_layers=2, num_heads=2, ff_dim=32,
                 residual=residual)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 10), jnp.int32))
  rng = np.random.default_rng(0)
  items = np.stack([pad_to(rng.integers(1, 41, n).astype(np.int32), 10, padding)
                    for n in (1, 4, 10)])
  np.testing.assert_allclose(serving_vectors(model, params, {"inputs": items}),
                             user_vectors(model, params, {"inputs": items}), atol=2e-6)


def test_output_dropout_drops_table_and_candidate_elements_in_training_only():
  model = make_model(output_dropout=0.25)
  items = jnp.array([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
  params = model.init(jax.random.key(0), items)
  full = np.asarray(model.apply(params, method=model.item_embeddings))
  np.testing.assert_array_equal(full, make_model().apply(params, method="item_embeddings"))

  def drawn(method, key, *args, **kwargs):
    return np.asarray(jax.jit(lambda p, k: model.apply(p, *args, method=method, deterministic=False,
                                                        rngs={"dropout": k}, **kwargs))(params, key))

  table = drawn("item_embeddings", jax.random.key(1))
  kept = table != 0
  # Inverted dropout: survivors scaled by 1 / keep probability, about a quarter of the elements zeroed.
  np.testing.assert_allclose(table[kept], full[kept] / 0.75, rtol=1e-6)
  assert 0.15 < 1 - kept.mean() < 0.35
  assert not np.array_equal(kept, drawn("item_embeddings", jax.random.key(2)) != 0)
  # A padded table (split over devices) drops exactly the elements the whole one does.
  padded = drawn("item_embeddings", jax.random.key(1), padded=True)
  assert padded.shape[0] > table.shape[0]
  np.testing.assert_array_equal(padded[:table.shape[0]], table)
  ids = jnp.array([3, 5, 5, 40])
  vectors = drawn("item_vectors", jax.random.key(1), ids)
  np.testing.assert_allclose(vectors[vectors != 0], (full[np.asarray(ids)] / 0.75)[vectors != 0], rtol=1e-6)
  assert (vectors == 0).any()
  with pytest.raises(ValueError, match=r"output_dropout must be in \[0, 1\)"):
    make_model(output_dropout=1.0).init(jax.random.key(0), items)
