"""Item encoders: id/content/both representations, masking, alignment, cold-start items."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.config import get_default_config
from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.pipeline import eval_batches, train_dataset
from recattn_jax.evaluation import metrics_from_ranks
from recattn_jax.models import SASRec, init_encoder
from recattn_jax.models.item_encoder import TABLE_ROW_MULTIPLE, ItemEncoder, table_rows
from recattn_jax.parallel import make_mesh
from recattn_jax.training.steps import (init_state, make_catalogue_step, make_optimizer,
                                        make_rank_step, make_train_step, next_item_loss,
                                        shard_batch)

N = 12
D = 16


def tiny_features(num_items=N, seed=0, text=True, pad_to=None) -> ItemFeatures:
  rng = np.random.default_rng(seed)
  year = np.r_[0, rng.integers(0, 4, num_items)]  # some 0 = unknown
  genres = np.zeros((num_items + 1, 3), np.int32)
  for row in range(1, num_items + 1):
    k = rng.integers(0, 4)
    genres[row, :k] = rng.choice(np.arange(1, 6), size=k, replace=False)
  if pad_to:
    genres = np.pad(genres, ((0, 0), (0, pad_to - genres.shape[1])))
  kwargs = {}
  if text:
    embeddings = rng.normal(size=(num_items + 1, 5)).astype(np.float32)
    embeddings[0] = 0
    embeddings[3] = 0  # item 3 has no text
    kwargs["text_embeddings"] = embeddings
  return ItemFeatures(categorical={"year": year}, tokens={"genre": genres},
                      vocab_sizes={"year": 4, "genre": 6}, **kwargs)


# Jitted: one compile per encoder instead of one per operation (much faster on CPU).
def init(encoder: ItemEncoder, seed=0):
  return jax.jit(encoder.init)(jax.random.key(seed), jnp.zeros((1, 3), jnp.int32))


def table(encoder, params):
  return np.asarray(jax.jit(lambda p: encoder.apply(p, method="table"))(params))


def test_id_representation_is_the_plain_table():
  encoder = ItemEncoder(N, D)
  params = init(encoder)
  # Rows padded to whole shards; the table is the first N + 1, and the rest is never read.
  assert jax.tree.map(jnp.shape, params) == {"params": {"embedding": (table_rows(N), D)}}
  assert table_rows(N) % TABLE_ROW_MULTIPLE == 0 and table_rows(N) > N
  ids = jnp.array([[1, 2, 0], [N, 3, 3]])
  np.testing.assert_array_equal(encoder.apply(params, ids), params["params"]["embedding"][ids])
  np.testing.assert_array_equal(table(encoder, params), params["params"]["embedding"][:N + 1])
  padded = jax.jit(lambda p: encoder.apply(p, method="table", padded=True))(params)
  np.testing.assert_array_equal(padded, params["params"]["embedding"])


def test_padding_rows_leave_the_real_rows_initialised_as_an_unpadded_table():
  # Why padding changed no result: the initializer draws rows 0..N alike for both shapes.
  key = jax.random.PRNGKey(7)
  init_rows = lambda rows: nn.initializers.normal(0.02)(key, (rows, D))
  np.testing.assert_array_equal(init_rows(table_rows(N))[:N + 1], init_rows(N + 1))


@pytest.mark.parametrize("representation", ["content", "both"])
def test_lookup_matches_the_table(representation):
  encoder = ItemEncoder(N, D, item_features=tiny_features(), representation=representation)
  params = init(encoder)
  assert ("embedding" in params["params"]) == (representation == "both")
  full = table(encoder, params)
  assert full.shape == (N + 1, D) and np.all(np.isfinite(full))
  assert 0.005 < full.std() < 0.1  # starts at the id table's scale
  few = jnp.array([[1, 2, 0], [N, 3, 3]])  # fewer ids than rows: encoded on their own
  many = jnp.tile(jnp.arange(N + 1), (2, 1))  # as many: gathered from the table
  lookup = jax.jit(lambda p, i: encoder.apply(p, i))
  np.testing.assert_allclose(lookup(params, few), full[np.asarray(few)], atol=1e-6)
  np.testing.assert_allclose(lookup(params, many), full[np.asarray(many)], atol=1e-6)


def test_padding_tokens_do_not_change_the_output():
  features = tiny_features()
  encoder = ItemEncoder(N, D, item_features=features, representation="content")
  params = init(encoder)
  reference = table(encoder, params)
  # Wider padding: same parameters, same vectors.
  wide = ItemEncoder(N, D, item_features=tiny_features(pad_to=7), representation="content")
  np.testing.assert_allclose(table(wide, params), reference, atol=1e-6)
  # The padding rows of the token tables are never read.
  perturbed = jax.tree.map(lambda x: x, params)
  content = perturbed["params"]["content"]
  for name in ("embed_year", "embed_genre"):
    content[name]["embedding"] = content[name]["embedding"].at[0].add(5.0)
  np.testing.assert_allclose(table(encoder, perturbed), reference, atol=1e-6)
  # Nor does the text of an item without text (its row is masked, not zero-projected).
  embeddings = features.text_embeddings.copy()
  embeddings[3] = 100.0
  changed = ItemEncoder(N, D, representation="content", item_features=dataclasses.replace(
      features, text_embeddings=embeddings))
  out = table(changed, params)
  np.testing.assert_allclose(out, reference, atol=1e-6)
  # But real tokens do matter, and their order within an item does not (a set).
  genres = features.tokens["genre"].copy()
  row = int(np.flatnonzero((genres > 0).sum(1) >= 2)[0])
  genres[row, :2] = genres[row, 1::-1]
  swapped = ItemEncoder(N, D, representation="content", item_features=dataclasses.replace(
      features, tokens={"genre": genres}))
  np.testing.assert_allclose(table(swapped, params), reference, atol=1e-5)
  genres[row, 0] = 0
  fewer = ItemEncoder(N, D, representation="content", item_features=dataclasses.replace(
      features, tokens={"genre": genres}))
  assert not np.allclose(table(fewer, params)[row], reference[row], atol=1e-4)


def test_both_uses_content_alone_for_untrained_items():
  features = tiny_features().with_trained_items([np.arange(1, 9)], drop_untrained_tokens=False)
  encoder = ItemEncoder(N, D, item_features=features, representation="both")
  params = init(encoder)
  content = table(ItemEncoder(N, D, item_features=features, representation="content"), params)
  both = table(encoder, params)
  ids = np.asarray(params["params"]["embedding"])
  np.testing.assert_allclose(both[1:9], content[1:9] + ids[1:9], atol=1e-6)
  np.testing.assert_allclose(both[9:], content[9:], atol=1e-6)
  # Untrained items' id rows get no gradient at all.
  grads = jax.jit(jax.grad(lambda p: jnp.sum(encoder.apply(p, method="table") ** 2)))(params)
  assert np.all(np.asarray(grads["params"]["embedding"][9:]) == 0)  # incl. the padding rows
  assert np.any(np.asarray(grads["params"]["embedding"][1:9]) != 0)


def test_id_dropout_makes_some_trained_items_cold_in_training_only():
  features = tiny_features(num_items=40).with_trained_items([np.arange(1, 41)])
  encoder = ItemEncoder(40, D, item_features=features, representation="both", id_dropout=0.5)
  params = init(encoder)
  content = table(ItemEncoder(40, D, item_features=features, representation="content"), params)
  full = table(encoder, params)  # deterministic by default: every trained id row is used
  assert not np.any(np.all(np.isclose(full[1:], content[1:], atol=1e-6), axis=1))
  drawn = np.asarray(jax.jit(lambda p, key: encoder.apply(
      p, method=lambda m: m.table(deterministic=False), rngs={"dropout": key}))(
          params, jax.random.key(3)))
  dropped = np.all(np.isclose(drawn, content, atol=1e-6), axis=1)[1:]
  np.testing.assert_allclose(drawn[1:][~dropped], full[1:][~dropped], atol=1e-6)
  assert 8 <= dropped.sum() <= 32  # about half of 40
  with pytest.raises(ValueError, match="id_dropout must be in"):
    init(ItemEncoder(N, D, item_features=tiny_features(), representation="both", id_dropout=1.0))


def test_text_only_and_token_only_features():
  features = tiny_features()
  for f in (ItemFeatures(text_embeddings=features.text_embeddings),
            dataclasses.replace(features, text_embeddings=None, text_mask=None)):
    encoder = ItemEncoder(N, D, item_features=f, representation="content")
    assert table(encoder, init(encoder)).shape == (N + 1, D)


def test_bad_configurations_raise():
  with pytest.raises(ValueError, match="representation must be one of"):
    init(ItemEncoder(N, D, representation="ids"))
  with pytest.raises(ValueError, match="needs item_features"):
    init(ItemEncoder(N, D, representation="content"))
  with pytest.raises(ValueError, match="13 rows but the model has num_items=20"):
    init(ItemEncoder(20, D, item_features=tiny_features(), representation="both"))
  with pytest.raises(ValueError, match="13 rows but the model has num_items=20"):
    init(ItemEncoder(20, D, item_features=tiny_features()))  # even when unused
  with pytest.raises(ValueError, match="not divisible by num_heads=3"):
    init(ItemEncoder(N, D, item_features=tiny_features(), representation="content",
                     content_heads=3))


def test_sasrec_with_content_items_is_hashable_and_jits():
  features = tiny_features()
  model = SASRec(num_items=N, max_len=6, embed_dim=D, num_layers=1, num_heads=2, ff_dim=32,
                 item_features=features, item_representation="both")
  hash(model)  # Flax needs this; ItemFeatures hashes by identity
  items = jnp.array([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]])
  params = jax.jit(model.init)(jax.random.key(0), items)
  assert params["params"]["item_embed"]["embedding"].shape == (table_rows(N), D)
  hidden = jax.jit(lambda p, x: model.apply(p, x))(params, items)
  assert hidden.shape == (2, 6, D) and np.all(np.isfinite(hidden))
  with pytest.raises(ValueError, match="item_representation=.text. is not a known item encoder"):
    SASRec(num_items=N, max_len=6, embed_dim=D, item_representation="text").init(
        jax.random.key(0), items)


# ----------------------------------------------------------------------------
# Cold start: an item never seen in training, recommended from its content.

GROUPS, PER_GROUP = 5, 6  # items 6g+1..6g+6 form group g; the last of each is cold


def cold_start_data(seed=0):
  rng = np.random.default_rng(seed)
  num_items = GROUPS * PER_GROUP
  group = np.r_[0, np.repeat(np.arange(1, GROUPS + 1), PER_GROUP)]
  # Tags: the group's tag, and sometimes one of two tags every group shares (noise).
  tags = np.zeros((num_items + 1, 2), np.int32)
  tags[1:, 0] = group[1:]
  noisy = rng.random(num_items) < 0.5
  tags[1:, 1] = np.where(noisy, GROUPS + 1 + rng.integers(0, 2, num_items), 0)
  cold = np.zeros(num_items + 1, bool)
  cold[np.arange(1, GROUPS + 1) * PER_GROUP] = True
  warm_of = [np.flatnonzero((group == g) & ~cold) for g in range(1, GROUPS + 1)]
  train = [rng.choice(warm_of[g % GROUPS], size=rng.integers(4, 9)) for g in range(300)]
  # Test users: a few warm items of one group, then that group's cold item.
  histories, targets = [], []
  for g in range(GROUPS):
    for _ in range(8):
      histories.append(rng.choice(warm_of[g], size=3, replace=False).astype(np.int32))
      targets.append(g * PER_GROUP + PER_GROUP)
  features = ItemFeatures(categorical={"group": group}, tokens={"tags": tags},
                          vocab_sizes={"group": GROUPS + 1, "tags": GROUPS + 3})
  return num_items, train, histories, np.asarray(targets, np.int32), features.with_trained_items(train)


def train_and_rank(representation, num_items, train, histories, targets, features, steps=120):
  config = get_default_config()
  config.train.learning_rate = 1e-2
  config.train.weight_decay = 0.0
  mesh = make_mesh(num_devices=1)
  model = SASRec(num_items=num_items, max_len=8, embed_dim=16, num_layers=1, num_heads=1,
                 ff_dim=32, dropout_rate=0.1, attention_impl="xla", item_features=features,
                 item_representation=representation)
  optimizer = make_optimizer(config.train, steps)
  state = init_state(functools.partial(init_encoder, model, max_len=8), optimizer, seed=0, mesh=mesh)
  train_step = make_train_step(next_item_loss(model), optimizer, mesh, state)
  batches = iter(train_dataset(train, max_len=8, batch_size=32, seed=0))
  for _ in range(steps):
    state, _ = train_step(state, shard_batch(next(batches), mesh))
  rank_step = make_rank_step(model, mesh, item_chunk=64, ties="pessimistic")
  batch = next(eval_batches(histories, targets, max_len=8, batch_size=len(targets)))
  table = make_catalogue_step(model, mesh)(state.params)
  return np.asarray(rank_step(state.params, table, shard_batch(batch, mesh))[0])


def test_cold_items_are_recommended_from_content_but_not_by_id():
  num_items, train, histories, targets, features = cold_start_data()
  assert not features.trained[targets].any()  # the targets never occur in training
  chance = (num_items - 3 - 1) / 2  # mean rank of a random order, history excluded
  content = train_and_rank("content", num_items, train, histories, targets, features)
  ids = train_and_rank("id", num_items, train, histories, targets, features)
  # The group's 2 warm items outside the history are the only fair competitors (and
  # tie with the cold item when their tags match): ranks <= 2 are right.
  assert content.mean() < chance / 3, content
  assert metrics_from_ranks(content, (5,))["HR@5"] > 0.6, content
  # An id row that was only ever a softmax negative ranks its item near the bottom.
  assert ids.mean() > chance, ids
