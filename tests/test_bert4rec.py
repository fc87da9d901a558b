"""BERT4Rec: shapes, bidirectional masking, padding/packing invariance, scoring with bias."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.pipeline import eval_batches, train_dataset
from recattn_jax.models import BERT4Rec, last_hidden
from tests.helpers import make_encoder, score_items

NUM_ITEMS, MASK = 40, 41


def make_model(positions="end", max_len=12, **overrides):
  """A tiny BERT4Rec; the reference engine compiles fastest (engines are compared below)."""
  fields = dict(embed_dim=16, num_heads=2, ff_dim=32, positions=positions,
                attention_impl="reference")
  return make_encoder("bert4rec", num_items=NUM_ITEMS, max_len=max_len, **{**fields, **overrides})


def test_shapes_mask_id_and_scores_with_bias():
  model = make_model()
  assert isinstance(model, BERT4Rec) and model.mask_id == MASK
  items = jnp.array([[0, 0, 3, 4, MASK, 6, 7, 8, 9, 10, 11, MASK], [1] * 11 + [MASK]])
  params = model.init(jax.random.key(0), items)
  hidden = model.apply(params, items)
  assert hidden.shape == (2, 12, 16) and np.all(np.isfinite(hidden))
  table = model.apply(params, method="item_embeddings")
  bias = model.apply(params, method="item_bias")
  assert table.shape == (NUM_ITEMS + 1, 16) and bias.shape == (NUM_ITEMS + 1,)
  bias = jnp.linspace(-1, 1, NUM_ITEMS + 1)
  padded = jnp.pad(bias, (0, params["params"]["output_bias"].shape[0] - NUM_ITEMS - 1))
  params = {"params": {**params["params"], "output_bias": padded}}
  logits = score_items(model, params, hidden)
  assert logits.shape == (2, 12, NUM_ITEMS + 1) and np.all(logits[..., 0] < -1e29)
  expected = np.asarray(hidden, np.float64) @ np.asarray(table, np.float64).T + np.asarray(bias)
  np.testing.assert_allclose(logits[..., 1:], expected[..., 1:], rtol=1e-5, atol=1e-5)
  no_bias = make_model(output_bias=False)
  assert "output_bias" not in jax.eval_shape(no_bias.init, jax.random.key(0), items)["params"]


def test_the_mask_token_reads_its_own_learned_vector():
  model = make_model()
  items = jnp.array([[0, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13, MASK],
                     [0, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
  params = model.init(jax.random.key(1), items)
  moved = {"params": {**params["params"], "mask_embed": jnp.linspace(-1.0, 1.0, 16)}}
  a, b = model.apply(params, items), model.apply(moved, items)
  assert not np.allclose(a[0], b[0], atol=1e-3)
  np.testing.assert_array_equal(a[1], b[1])  # a row without a mask never reads it


def test_a_later_item_changes_earlier_outputs():
  """Bidirectional: the opposite of SASRec's causality test."""
  model = make_model()
  rng = np.random.default_rng(0)
  items = rng.integers(1, NUM_ITEMS + 1, size=(3, 12))
  params = model.init(jax.random.key(2), jnp.asarray(items))
  changed = items.copy()
  changed[:, -1] = MASK
  a = model.apply(params, jnp.asarray(items))
  b = model.apply(params, jnp.asarray(changed))
  assert np.all(np.abs(np.asarray(a[:, :11]) - np.asarray(b[:, :11])).max(axis=-1) > 1e-4)


@pytest.mark.parametrize("positions", ["start", "end"])
def test_left_right_padding_and_packing_give_the_same_outputs(positions):
  model = make_model(positions)
  users = [[3, 4, MASK], [7, 8, 9, 10, MASK, 12], [2, 6]]
  params = model.init(jax.random.key(3), jnp.ones((1, 12), jnp.int32))
  left = np.zeros((3, 12), np.int32)
  right = np.zeros((3, 12), np.int32)
  for i, s in enumerate(users):
    left[i, 12 - len(s):] = s
    right[i, :len(s)] = s
  out_left = model.apply(params, jnp.asarray(left))
  out_right = model.apply(params, jnp.asarray(right))
  packed = np.array([sum(users, []) + [0]])
  segments = np.array([[1] * 3 + [2] * 6 + [3] * 2 + [0]])
  out_packed = model.apply(params, jnp.asarray(packed), jnp.asarray(segments))
  offset = 0
  for i, s in enumerate(users):
    n = len(s)
    np.testing.assert_allclose(out_left[i, 12 - n:], out_right[i, :n], atol=1e-5)
    np.testing.assert_allclose(out_packed[0, offset:offset + n], out_right[i, :n], atol=1e-5)
    offset += n
  np.testing.assert_allclose(last_hidden(out_left, jnp.asarray(left)),
                             last_hidden(out_right, jnp.asarray(right)), atol=1e-5)


def test_engines_agree_on_bidirectional_packed_attention():
  items = jnp.array([[3, 4, MASK, 7, 8, 9, 10, MASK, 2, 6, 0, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 0, 0]])
  reference = make_model(attention_impl="reference")
  params = reference.init(jax.random.key(4), items)
  want = reference.apply(params, items, segments)
  got = make_model(attention_impl="blockwise").apply(params, items, segments)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_mask_last_training_matches_the_evaluation_layout():
  """Train on "mask the newest event" examples, then score the same users through eval batches."""
  model = make_model(dropout_rate=0.0, num_layers=1)
  rng = np.random.default_rng(0)
  seqs = [rng.integers(1, NUM_ITEMS + 1, size=n) for n in (4, 6, 9, 12, 15, 5, 7, 8)]
  batch = next(iter(train_dataset(seqs, max_len=12, batch_size=8, seed=0, objective="cloze",
                                  mask_prob=0.2, mask_id=model.mask_id, last_item_prob=1.0)))
  params = model.init(jax.random.key(5), jnp.ones((1, 12), jnp.int32))
  optimizer = optax.adam(3e-2)
  opt_state = optimizer.init(params)

  def loss_fn(p):
    logits = score_items(model, p, model.apply(p, batch["inputs"]))
    weight = batch["targets"] > 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return jnp.sum(ce * weight) / weight.sum()

  @jax.jit
  def step(p, o):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, o = optimizer.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss, grads

  losses = []
  for _ in range(60):
    params, opt_state, loss, grads = step(params, opt_state)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    losses.append(float(loss))
  assert losses[-1] < 0.1 * losses[0]
  # The same users through the evaluation path (history then one appended mask) are
  # exactly the training rows, so the scores there are the ones trained.
  histories = [s[:-1] for s in seqs]
  targets = np.array([s[-1] for s in seqs])
  inputs = next(eval_batches(histories, targets, max_len=12, batch_size=8,
                             append_mask_id=model.mask_id))["inputs"]
  assert sorted(map(tuple, inputs)) == sorted(map(tuple, batch["inputs"]))

  @jax.jit
  def predict(p, inputs):
    users = last_hidden(model.apply(p, inputs), inputs)
    return jnp.argmax(score_items(model, p, users), axis=-1)

  assert np.mean(np.asarray(predict(params, jnp.asarray(inputs))) == targets) >= 0.75


@pytest.mark.parametrize("name", ["bert4rec", "hstu"])
def test_item_representation_reaches_the_item_encoder(name):
  """`model.<name>.item_representation` and build_encoder's `item_features` switch the shared table."""
  year = np.r_[0, np.arange(NUM_ITEMS) % 4 + 1]
  features = ItemFeatures(categorical={"year": year}, vocab_sizes={"year": 5})
  fields = dict(embed_dim=16, num_heads=2, item_representation="content")
  if name == "bert4rec":
    fields["ff_dim"] = 32
  model = make_encoder(name, num_items=NUM_ITEMS, max_len=12, item_features=features, **fields)
  items = jnp.ones((1, 12), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), items)["params"]
  assert "embedding" not in params["item_embed"]  # no id rows: the table comes from features
  table = jax.eval_shape(lambda p: model.apply({"params": p}, method="item_embeddings"), params)
  assert table.shape == (NUM_ITEMS + 1, 16)
