"""The recipes of docs/contributing.md, followed from outside the library: an encoder, a loss, a reader.

Each is registered from this file (no library file is edited), picked by
name in a config, and trained end to end through `train_and_evaluate`.
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.config import get_default_config
from recattn_jax.models import (ENCODERS, Encoder, SequenceEncoder, build_encoder, encoder_kwargs,
                                encoder_spec)
from recattn_jax.registry import Registry
from recattn_jax.training import losses
from recattn_jax.training.loop import train_and_evaluate
from tests.helpers import tiny_config, write_sequence_file


# -- Recipe 1: a new encoder (here: a causal mean of the history, then an MLP).
class MeanPool(SequenceEncoder):
  """Each position's vector is the mean of its segment's events so far, through an MLP."""

  hidden_dim: int = 32

  def setup_blocks(self):
    self.mlp = nn.Dense(self.hidden_dim, name="mlp")
    self.out = nn.Dense(self.embed_dim, name="out")

  def encode_events(self, x, layout, deterministic, timestamps):
    del timestamps
    same = layout.segment_ids[:, :, None] == layout.segment_ids[:, None, :]
    causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
    weights = (same & causal & layout.valid[:, None, :]).astype(x.dtype)
    pooled = weights @ x / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)
    return self.out(nn.gelu(self.mlp(pooled))) * layout.valid[..., None]


# -- Recipe 2: a new loss (here: a hinge on the target against every other item).
def hinge(margin: float = 1.0):
  def loss_fn(hidden, table, targets, key, item_mask=None):
    del key, item_mask
    scores = jnp.einsum("bld,nd->bln", hidden, table)
    target = jnp.take_along_axis(scores, targets[..., None], axis=-1)
    violation = jax.nn.relu(margin - target + scores).at[..., 0].set(0.0)
    weight = (targets > 0).astype(jnp.float32)
    loss = jnp.sum(violation.mean(-1) * weight) / jnp.maximum(weight.sum(), 1.0)
    return loss, {"loss": loss, "events": weight.sum()}
  return loss_fn


@pytest.fixture
def registered():
  ENCODERS.register("mean_pool", objective="causal")(MeanPool)
  losses.LOSSES.register("hinge")(hinge)
  yield
  ENCODERS.unregister("mean_pool")
  losses.LOSSES.unregister("hinge")


def test_a_user_encoder_and_loss_train_from_a_config(registered, tmp_path):
  data = write_sequence_file(tmp_path / "seqs.txt")
  config = tiny_config(data, num_epochs=6)
  config.model.name = "mean_pool"
  config.model.mean_pool = encoder_kwargs("mean_pool")  # the config fields, from the module
  config.model.mean_pool.embed_dim = 16
  config.train.loss.name = "hinge"
  config.train.loss.hinge = losses.loss_kwargs("hinge")
  config.train.loss.hinge.margin = 0.5
  assert encoder_spec("mean_pool")["objective"] == "causal"
  results = train_and_evaluate(config, tmp_path / "run")
  ours = results["test"]["seen_excluded"]["NDCG@10"]
  assert ours > results["popularity_baseline"]["seen_excluded"]["NDCG@10"] + 0.05


def test_misspelt_fields_and_unknown_names_are_named(registered):
  config = get_default_config().model
  config.sasrec.num_head = 2
  with pytest.raises(ValueError, match=r"model.sasrec: unknown field\(s\) \['num_head'\]; allowed: .*'num_heads'"):
    build_encoder(config, num_items=10, max_len=5)
  config.name = "transformer_xl"
  with pytest.raises(ValueError, match=r"model.name='transformer_xl' is not a known encoder; known: "
                                       r"\['bert4rec', 'gru4rec', 'hstu', 'mean_pool', 'sasrec'\]"):
    build_encoder(config, num_items=10, max_len=5)
  with pytest.raises(ValueError, match="already registered"):
    ENCODERS.register("sasrec")(MeanPool)


def test_every_shipped_encoder_has_the_encoder_interface():
  for name in ENCODERS:
    config = get_default_config().model
    config.name = name
    assert isinstance(build_encoder(config, num_items=10, max_len=5), Encoder), name


def test_every_shipped_encoder_declares_what_it_needs():
  specs = {name: encoder_spec(name) for name in ENCODERS}
  assert specs["bert4rec"]["objective"] == "cloze" and specs["sasrec"]["objective"] == "causal"
  assert specs["hstu"]["batch_keys"] == ("timestamps",) and specs["sasrec"]["kv_cache"]
  assert not specs["gru4rec"]["kv_cache"]
  defaults = encoder_kwargs("sasrec")
  assert defaults["embed_dim"] == 64 and "num_items" not in defaults and "ff_dim" in defaults
  assert "ff_dim" not in encoder_kwargs("hstu")  # each model has only its own fields
  # The default config holds exactly the modules' defaults: one place for them.
  assert dict(get_default_config().model.hstu) == encoder_kwargs("hstu")


def test_registry_basics():
  registry = Registry("widget", "widget.name")
  registry.register("a", size=1)(len)
  assert registry.get("a") is len and registry.spec("a") == {"size": 1} and "a" in registry
  with pytest.raises(ValueError, match="widget.name='b' is not a known widget; known: \\['a'\\]"):
    registry.get("b")


def test_gru4rec_is_causal_and_packing_does_not_leak():
  """A later event never changes an earlier output, and packed users equal their unpacked rows."""
  model = build_encoder(_gru_config(), num_items=30, max_len=8)
  items = jnp.array([[3, 4, 5, 6, 7, 8, 9, 10]])
  params = model.init(jax.random.key(0), items)
  full = model.apply(params, items)
  changed = model.apply(params, items.at[0, 5].set(20))
  np.testing.assert_allclose(full[0, :5], changed[0, :5], atol=1e-6)
  assert not np.allclose(full[0, 5:], changed[0, 5:])
  packed = jnp.array([[3, 4, 5, 11, 12, 13, 14, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
  got = model.apply(params, packed, segments)
  first = model.apply(params, jnp.array([[0, 0, 0, 0, 0, 3, 4, 5]]))[0, 5:]
  second = model.apply(params, jnp.array([[11, 12, 13, 14, 0, 0, 0, 0]]))[0, :4]
  np.testing.assert_allclose(got[0, :3], first, atol=1e-5)
  np.testing.assert_allclose(got[0, 3:7], second, atol=1e-5)
  assert np.all(got[0, 7] == 0)


def _gru_config():
  config = get_default_config().model
  config.name = "gru4rec"
  config.gru4rec.update(embed_dim=16, num_layers=2, dropout_rate=0.0)
  return config


def test_gru4rec_matches_a_numpy_gru():
  """One layer against the GRU equations of flax.linen.GRUCell written in numpy."""
  config = _gru_config()
  config.gru4rec.num_layers = 1
  model = build_encoder(config, num_items=12, max_len=5)
  items = jnp.array([[0, 2, 7, 3, 9]])
  params = model.init(jax.random.key(1), items)
  p = jax.tree.map(np.asarray, params["params"])
  x = p["item_embed"]["embedding"][np.asarray(items[0])].astype(np.float64)
  cell = p["gru_0"]["cell"]
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  h = np.zeros(16)
  want = []
  for t, item in enumerate(np.asarray(items[0])):
    if item == 0:
      want.append(np.zeros(16))
      continue
    dense = lambda name, v, bias=True: v @ cell[name]["kernel"] + (cell[name]["bias"] if bias else 0)
    r = sigmoid(dense("ir", x[t]) + dense("hr", h, False))
    z = sigmoid(dense("iz", x[t]) + dense("hz", h, False))
    n = np.tanh(dense("in", x[t]) + r * dense("hn", h))
    h = (1 - z) * n + z * h
    want.append(h)
  want = np.stack(want) @ p["output"]["kernel"] + p["output"]["bias"]
  want[0] = 0
  np.testing.assert_allclose(model.apply(params, items)[0], want, atol=1e-5)


# -- Recipe 3: a new data format (here: "user>item" lines).
def read_arrows(path):
  import pandas as pd  # pylint: disable=g-import-not-at-top
  rows = [line.split(">") for line in pathlib.Path(path).read_text().split()]
  return pd.DataFrame({"user_id": [u for u, _ in rows], "item_id": [i for _, i in rows],
                       "timestamp": np.arange(len(rows), dtype=np.float64),
                       "rating": np.full(len(rows), np.nan)})


def test_a_user_reader_feeds_training_through_the_one_entry_point(tmp_path):
  from recattn_jax.data import READERS, load_interactions  # pylint: disable=g-import-not-at-top
  READERS.register("arrows")(read_arrows)
  try:
    lines = write_sequence_file(tmp_path / "seqs.txt").read_text().split("\n")
    (tmp_path / "events.arrows").write_text("\n".join(
        f"{parts[0]}>{item}" for parts in (l.split() for l in lines if l) for item in parts[1:]))
    config = tiny_config(tmp_path / "events.arrows", num_epochs=2)
    config.data.format = "arrows"
    frame, _ = load_interactions(config.data)
    assert len(frame) == sum(len(l.split()) - 1 for l in lines if l)
    results = train_and_evaluate(config, tmp_path / "run")
    assert results["data"]["users"] == 96
  finally:
    READERS.unregister("arrows")
