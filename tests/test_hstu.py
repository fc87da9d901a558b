"""HSTU: block vs numpy, causality, padding and packing, time bias, timestamp plumbing."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from recattn_jax.attention import MaskSpec, attention_fn
from recattn_jax.data.pipeline import eval_batches, train_dataset
from recattn_jax.data.preprocess import build_sequences, leave_one_out
from recattn_jax.models import HSTU, last_hidden
from recattn_jax.models.hstu import HSTUBlock, RelativeBias, time_buckets
from tests.helpers import make_encoder

NUM_ITEMS = 40


def make_model(positions="end", max_len=12, **overrides):
  """A tiny HSTU; the reference engine is the cheapest to run op by op (engines compared below)."""
  fields = dict(embed_dim=16, num_heads=2, positions=positions, attention_impl="reference",
                num_time_buckets=16)
  return make_encoder("hstu", num_items=NUM_ITEMS, max_len=max_len, **{**fields, **overrides})


def _layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _silu(x):
  return x / (1.0 + np.exp(-x))


def _numpy_bias(p, length, timestamps, num_time_buckets, step):
  """[B or 1, heads, L, L] relative position (+ time) bias, spelled out."""
  index = np.arange(length)
  distance = np.minimum(np.abs(index[:, None] - index[None, :]), len(p["position"]) - 1)
  bias = p["position"][distance].transpose(2, 0, 1)[None]
  if timestamps is None:
    return bias
  gap = np.abs(timestamps[:, :, None] - timestamps[:, None, :])
  bucket = np.clip(np.floor(np.log(np.maximum(gap, 1.0)) / step), 0, num_time_buckets).astype(int)
  weights = np.concatenate([np.zeros((1, p["time"].shape[1])), p["time"]])
  return bias + weights[bucket].transpose(0, 3, 1, 2)


def _numpy_block(p, x, bias, valid, heads, row_scale):
  """One HSTU block: causal mask over `valid` keys, N = the row's valid count, times row_scale."""
  batch, length, dim = x.shape
  uvqk = _silu(np.einsum("bld,dfhe->blfhe", _layer_norm(x, p["input_norm"]), p["uvqk"]["kernel"])
               + p["uvqk"]["bias"])
  u, v, q, k = (uvqk[:, :, i] for i in range(4))
  logits = np.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(dim // heads) + bias
  allowed = np.tril(np.ones((length, length), bool))[None, None] & valid[:, None, None, :]
  norm = np.maximum(valid.sum(-1), 1)[:, None, None, None]
  weights = np.where(allowed, _silu(logits), 0.0) / norm
  attended = np.einsum("bhij,bjhd->bihd", weights, v) * row_scale[:, :, None, None]
  attended = attended.reshape(batch, length, dim)
  gated = _layer_norm(attended, p["attention_norm"]) * u.reshape(batch, length, dim)
  out = x + gated @ p["out"]["kernel"] + p["out"]["bias"]
  return out * valid[..., None]


@pytest.mark.parametrize("per_head", [False, True])
def test_block_and_bias_match_a_numpy_reference(per_head):
  rng = np.random.default_rng(0)
  batch, length, dim, heads, buckets, step = 2, 10, 16, 2, 12, 0.301
  x = rng.normal(size=(batch, length, dim)).astype(np.float32)
  valid = np.ones((batch, length), bool)
  valid[1, :3] = False  # left padding
  times = np.cumsum(rng.exponential(300.0, size=(batch, length)), axis=1).astype(np.float32)
  times -= times[:, -1:]
  relative = RelativeBias(num_position_buckets=6, num_time_buckets=buckets, time_bucket_step=step,
                          heads=heads if per_head else 1)
  bias_params = relative.init(jax.random.key(0), length, jnp.asarray(times))["params"]
  bias = relative.apply({"params": bias_params}, length, jnp.asarray(times))
  bias_params = jax.tree.map(np.asarray, bias_params)
  want_bias = _numpy_bias(bias_params, length, times, buckets, step)
  np.testing.assert_allclose(bias, want_bias, atol=1e-6)
  assert bias.shape == (batch, heads if per_head else 1, length, length)

  mask = MaskSpec(causal=True, kv_valid=jnp.asarray(valid))
  row_scale = rng.uniform(0.2, 2.0, size=(batch, length)).astype(np.float32)
  block = HSTUBlock(dim, heads, dropout_rate=0.0, attention_fn=attention_fn("reference"))
  args = (jnp.asarray(x), mask, bias, jnp.asarray(valid), True, jnp.asarray(row_scale))
  params = block.init(jax.random.key(1), *args)
  want = _numpy_block(jax.tree.map(np.asarray, params["params"]), x.astype(np.float64), want_bias,
                      valid, heads, row_scale)
  for impl in ("reference", "blockwise"):
    got = HSTUBlock(dim, heads, dropout_rate=0.0, attention_fn=attention_fn(impl)).apply(params, *args)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_time_buckets_are_log_spaced_and_clipped():
  t = jnp.array([[0.0, 0.5, 1.0, 2.0, 1e3, 1e9]])
  buckets = np.asarray(time_buckets(t, num_buckets=40, step=0.301))[0, 0]
  np.testing.assert_array_equal(buckets, [0, 0, 0, 2, 22, 40])


def test_shapes_and_finite_gradients_through_every_parameter():
  model = make_model(attention_impl="blockwise")
  assert isinstance(model, HSTU)
  items = jnp.array([[0, 0, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1] * 12])
  times = jnp.cumsum(jnp.full((2, 12), 100.0), axis=1)
  params = model.init(jax.random.key(0), items, timestamps=times)

  def loss(p):
    hidden = model.apply(p, items, timestamps=times, deterministic=False,
                         rngs={"dropout": jax.random.key(1)})
    return jnp.sum(hidden @ model.apply(p, method="item_embeddings").T)

  hidden = model.apply(params, items, timestamps=times)
  assert hidden.shape == (2, 12, 16) and np.all(np.isfinite(hidden))
  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
  assert np.any(grads["params"]["relative_bias"]["time"] != 0)
  assert np.any(grads["params"]["relative_bias"]["position"] != 0)


def test_future_items_and_times_never_change_earlier_outputs():
  model = make_model()
  rng = np.random.default_rng(0)
  items = rng.integers(1, NUM_ITEMS + 1, size=(3, 12))
  times = np.cumsum(rng.exponential(100.0, size=(3, 12)), axis=1)
  params = model.init(jax.random.key(1), jnp.asarray(items))
  changed, later = items.copy(), times.copy()
  changed[:, 7:] = rng.integers(1, NUM_ITEMS + 1, size=(3, 5))
  later[:, 7:] += 1e4
  a = model.apply(params, jnp.asarray(items), timestamps=jnp.asarray(times))
  b = model.apply(params, jnp.asarray(changed), timestamps=jnp.asarray(later))
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-5)
  assert not np.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def test_attention_norms_count_what_they_say():
  model = make_model(attention_norm="causal")
  segments = jnp.array([[1, 1, 1, 2, 2, 0], [0, 0, 1, 1, 1, 1]])
  mask = MaskSpec(causal=True, kv_valid=segments > 0, q_segment_ids=segments,
                  kv_segment_ids=segments)
  scale = lambda m: np.asarray(m.apply({}, mask, segments, method=HSTU._row_scale))
  # attend divides by the segment's size; "causal" turns that into the events up to i.
  np.testing.assert_allclose(scale(model)[0, :5], [3 / 1, 3 / 2, 3 / 3, 2 / 1, 2 / 2])
  np.testing.assert_allclose(scale(model)[1, 2:], [4 / 1, 4 / 2, 4 / 3, 4 / 4])
  np.testing.assert_allclose(scale(make_model())[0, :5], np.array([3, 3, 3, 2, 2]) / 12)
  assert make_model(attention_norm="sequence").apply({}, mask, segments,
                                                     method=HSTU._row_scale) is None


@pytest.mark.parametrize("norm", ["max_len", "causal", "sequence"])
def test_appending_events_changes_earlier_outputs_only_with_the_sequence_norm(norm):
  """With "sequence" N counts later events too, so a prefix reads the future's length."""
  model = make_model("start", attention_norm=norm)
  items = np.random.default_rng(5).integers(1, NUM_ITEMS + 1, size=(1, 12))
  prefix = np.where(np.arange(12) < 7, items, 0)
  params = model.init(jax.random.key(5), jnp.asarray(items))
  a = model.apply(params, jnp.asarray(items))[:, :7]
  b = model.apply(params, jnp.asarray(prefix))[:, :7]
  assert np.allclose(a, b, atol=1e-5) == (norm != "sequence")


@pytest.mark.parametrize("positions", ["start", "end"])
def test_left_right_padding_and_packing_give_the_same_outputs(positions):
  model = make_model(positions)
  users = [[3, 4, 5], [7, 8, 9, 10, 11, 12], [2, 6]]
  gaps = [[0, 5, 4e4], [0, 1, 2, 3e3, 9e5, 10], [0, 7e6]]
  params = model.init(jax.random.key(2), jnp.ones((1, 12), jnp.int32))
  left, right = np.zeros((3, 12), np.int32), np.zeros((3, 12), np.int32)
  t_left, t_right = np.zeros((3, 12), np.float32), np.zeros((3, 12), np.float32)
  for i, (s, g) in enumerate(zip(users, gaps)):
    n = len(s)
    left[i, 12 - n:], right[i, :n] = s, s
    t_left[i, 12 - n:] = t_right[i, :n] = np.cumsum(g)
  out_left = model.apply(params, jnp.asarray(left), timestamps=jnp.asarray(t_left))
  out_right = model.apply(params, jnp.asarray(right), timestamps=jnp.asarray(t_right))
  packed = np.array([sum(users, []) + [0]])
  t_packed = np.array([np.concatenate([np.cumsum(g) for g in gaps] + [[0.0]])], np.float32)
  segments = np.array([[1] * 3 + [2] * 6 + [3] * 2 + [0]])
  out_packed = model.apply(params, jnp.asarray(packed), jnp.asarray(segments),
                           timestamps=jnp.asarray(t_packed))
  offset = 0
  for i, s in enumerate(users):
    n = len(s)
    np.testing.assert_allclose(out_left[i, 12 - n:], out_right[i, :n], atol=1e-5)
    np.testing.assert_allclose(out_packed[0, offset:offset + n], out_right[i, :n], atol=1e-5)
    offset += n
  np.testing.assert_allclose(last_hidden(out_left, jnp.asarray(left)),
                             last_hidden(out_right, jnp.asarray(right)), atol=1e-5)


def test_time_bias_acts_only_through_differing_gaps():
  model = make_model()
  items = jnp.asarray(np.random.default_rng(3).integers(1, NUM_ITEMS + 1, size=(2, 12)))
  params = model.init(jax.random.key(3), items)
  run = lambda t: np.asarray(model.apply(params, items, timestamps=None if t is None else t))
  plain = run(None)
  np.testing.assert_allclose(run(np.full((2, 12), 1234.0, np.float32)), plain, atol=1e-6)
  spaced = np.cumsum(np.full((2, 12), 3600.0, np.float32), axis=1)
  shifted = run(spaced - 1e4)
  np.testing.assert_allclose(run(spaced), shifted, atol=1e-5)  # only differences matter
  assert not np.allclose(run(spaced), plain, atol=1e-4)
  # Equal times up to position 5, then a gap: earlier outputs are untouched.
  stepped = np.where(np.arange(12) >= 6, 5e5, 0.0).astype(np.float32)[None].repeat(2, 0)
  out = run(stepped)
  np.testing.assert_allclose(out[:, :6], plain[:, :6], atol=1e-6)
  assert not np.allclose(out[:, 6:], plain[:, 6:], atol=1e-4)


def test_engines_agree_with_packing_and_time_bias():
  items = jnp.array([[3, 4, 5, 7, 8, 9, 10, 11, 2, 6, 0, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 0, 0]])
  times = jnp.array([[0, 10, 1e4, 0, 1, 2, 3e3, 9e5, 0, 7e6, 0, 0]], jnp.float32)
  reference = make_model(bias_per_head=True)
  params = reference.init(jax.random.key(4), items)
  want = reference.apply(params, items, segments, timestamps=times)
  got = jax.jit(lambda p: make_model(bias_per_head=True, attention_impl="blockwise").apply(
      p, items, segments, timestamps=times))(params)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_timestamps_flow_from_splits_into_batches():
  df = pd.DataFrame({"user_id": ["a"] * 5 + ["b"] * 4,
                     "item_id": ["1", "2", "3", "4", "5", "2", "3", "4", "1"],
                     "timestamp": [10, 20, 40, 80, 160, 1000, 1001, 1003, 1007]})
  split = leave_one_out(build_sequences(df))
  np.testing.assert_array_equal(split.train_timestamps[0], [10, 20, 40])
  np.testing.assert_array_equal(split.test.history_timestamps[1], [1000, 1001, 1003])
  assert all(len(t) == len(s) for t, s in zip(split.train_timestamps, split.train))
  batch = next(iter(train_dataset(split.train, max_len=4, batch_size=2, seed=0,
                                  timestamps=split.train_timestamps)))
  for inputs, t in zip(batch["inputs"], batch["timestamps"]):
    assert batch["timestamps"].dtype == np.float32
    # Aligned with the inputs and relative to the newest input event.
    assert t[-1] == 0 and np.all(t[inputs == 0] == 0)
    # User "a" trains on events at 10, 20 (inputs) -> 40; user "b" on 1000 -> 1001.
    np.testing.assert_array_equal(t[inputs > 0], [-10, 0] if (inputs > 0).sum() == 2 else [0])
  packed = next(iter(train_dataset(split.train, max_len=4, batch_size=1, seed=0, pack=True,
                                   timestamps=split.train_timestamps)))
  assert set(packed) == {"inputs", "targets", "segment_ids", "timestamps"}
  row, segments = packed["timestamps"][0], packed["segment_ids"][0]
  for segment in set(segments[segments > 0].tolist()):  # relative to each user's own newest event
    times = row[segments == segment]
    np.testing.assert_array_equal(times, [-10, 0] if len(times) == 2 else [0])
  valid = next(eval_batches(split.valid.histories, split.valid.targets, max_len=4, batch_size=2,
                            timestamps=split.valid.history_timestamps))
  np.testing.assert_array_equal(valid["timestamps"], [[0, -30, -20, 0], [0, 0, -1, 0]])
  masked = next(eval_batches(split.test.histories, split.test.targets, max_len=4, batch_size=2,
                             timestamps=split.test.history_timestamps, append_mask_id=99))
  np.testing.assert_array_equal(masked["inputs"][1], [2, 3, 4, 99])
  np.testing.assert_array_equal(masked["timestamps"][1], [-3, -2, 0, 0])
