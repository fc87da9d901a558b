"""HSTU's key/value cache (`prefill` / `extend`) against full recomputation; SASRec's call shape.

The HSTU checks run op by op, not jitted, on arrays of one shape ([3, MAX_LEN]):
after the first test every operation is compiled already, where each jitted
configuration would compile its whole program again. Parameters are drawn with
numpy for the same reason (`model.init` compiles each initialiser).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.models import encoder_spec, last_hidden
from tests.helpers import make_encoder

NUM_ITEMS = 30
MAX_LEN = 10


def make_hstu(**overrides):
  fields = dict(embed_dim=16, num_layers=2, num_heads=2, positions="start",
                attention_impl="reference", num_time_buckets=32)
  return make_encoder("hstu", num_items=NUM_ITEMS, max_len=MAX_LEN, **{**fields, **overrides})


def random_params(model, seed=0):
  """Parameters of `model`'s shapes, N(0, 0.3), except its relative biases, N(0, 1).

  Far from the initial stddev of 0.02, so that a wrong distance or time bucket
  in the cache moves the outputs far past the tolerance.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, model.max_len), jnp.int32))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    stddev = 1.0 if "relative_bias" in jax.tree_util.keystr(path) else 0.3
    return jnp.asarray(rng.normal(0.0, stddev, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def hstu_params(**fields):
  """Parameters of the HSTUs built with `fields`, whatever their norm (which has none)."""
  return random_params(make_hstu(**fields))


def events(rows, length, seed):
  """Random items [rows, length] and increasing timestamps whose gaps span ~25 log buckets."""
  rng = np.random.default_rng(seed)
  items = rng.integers(1, NUM_ITEMS + 1, size=(rows, length)).astype(np.int32)
  times = np.cumsum(np.exp(rng.uniform(0.0, 8.0, size=(rows, length))), axis=1)
  return items, (times - times[:, -1:]).astype(np.float32)


def right_padded(items, times, lengths, width):
  """The first lengths[row] events of each row, right padded to `width`."""
  keep = np.arange(width) < np.asarray(lengths)[:, None]
  return (jnp.asarray(np.where(keep, items[:, :width], 0)),
          jnp.asarray(np.where(keep, times[:, :width], 0.0)))


def check_against_full_pass(model, params, lengths, timed, history_width=MAX_LEN, seed=0):
  """Prefills `lengths` events per row, then extends every row until the longest is full.

  After each call the user vectors must equal a full pass over the same events.
  """
  steps = model.max_len - max(lengths)
  items, times = events(len(lengths), model.max_len, seed)

  def expected(n):
    full, full_times = right_padded(items, times, n, model.max_len)
    return last_hidden(model.apply(params, full, timestamps=full_times if timed else None), full)

  history, history_times = right_padded(items, times, lengths, history_width)
  prefill = functools.partial(model.apply, method=model.prefill)
  if history_width != MAX_LEN:  # a new shape: one program compiles faster than its operations
    prefill = jax.jit(prefill)
  users, cache = prefill(params, history, timestamps=history_times if timed else None)
  np.testing.assert_allclose(users, expected(lengths), atol=1e-5, err_msg="prefill")
  assert cache["keys"].shape == (model.num_layers, len(lengths), model.max_len, 2, 8)
  assert ("timestamps" in cache) == (timed and model.num_time_buckets > 0)
  rows = np.arange(len(lengths))
  for t in range(1, steps + 1):
    index = np.asarray(lengths) + t - 1
    users, cache = model.apply(params, cache, jnp.asarray(items[rows, index]),
                               timestamps=jnp.asarray(times[rows, index]) if timed else None,
                               method=model.extend)
    np.testing.assert_allclose(users, expected(index + 1), atol=1e-5, err_msg=f"extend {t}")
  np.testing.assert_array_equal(cache["length"], np.asarray(lengths) + steps)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("norm", ["max_len", "causal"])
def test_prefill_and_extend_match_full_recomputation(norm, timed, per_head):
  # The longest row ends full (max_len events); the shortest grows from one event.
  model = make_hstu(attention_norm=norm, bias_per_head=per_head)
  check_against_full_pass(model, hstu_params(bias_per_head=per_head), lengths=[1, 3, 6],
                          timed=timed)


def test_distances_past_the_last_position_bucket_and_a_narrow_history():
  fields = dict(num_position_buckets=3, bias_per_head=True)
  model = make_hstu(attention_norm="causal", **fields)
  check_against_full_pass(model, hstu_params(**fields), lengths=[1, 2, 5], timed=True,
                          history_width=6, seed=1)


def test_timestamps_are_ignored_without_a_time_bias():
  model = make_hstu(num_time_buckets=0)
  check_against_full_pass(model, hstu_params(num_time_buckets=0), lengths=[2, 4, 1], timed=True,
                          seed=2)


def test_cache_refuses_the_sequence_norm_and_positions_from_the_end():
  history = jnp.ones((1, 3), jnp.int32)
  model = make_hstu(attention_norm="sequence")
  with pytest.raises(ValueError, match="model.hstu.attention_norm"):
    model.apply(hstu_params(), history, method=model.prefill)
  model = make_hstu(positions="end")
  with pytest.raises(ValueError, match="model.hstu.positions='start'"):
    model.apply(hstu_params(), history, method=model.prefill)


def test_extend_refuses_timestamps_the_prefill_did_not_have():
  model = make_hstu()
  # Shapes only: the refusal comes while tracing, before anything is computed.
  apply = lambda *args, **kwargs: jax.eval_shape(
      lambda: model.apply(hstu_params(), *args, **kwargs))
  items, times = jnp.ones((2, 3), jnp.int32), jnp.zeros((2, 3), jnp.float32)
  _, plain = apply(items, method=model.prefill)
  _, timed = apply(items, timestamps=times, method=model.prefill)
  new, new_times = jnp.ones((2,), jnp.int32), jnp.zeros((2,), jnp.float32)
  with pytest.raises(ValueError, match="timestamps exactly when prefill"):
    apply(plain, new, timestamps=new_times, method=model.extend)
  with pytest.raises(ValueError, match="timestamps exactly when prefill"):
    apply(timed, new, method=model.extend)


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_one_call_shape_serves_both_encoders(name):
  """What a serving layer calls, by keyword; SASRec ignores the timestamps."""
  assert encoder_spec(name)["kv_cache"]
  if name == "sasrec":
    model = make_encoder("sasrec", num_items=NUM_ITEMS, max_len=MAX_LEN, embed_dim=16,
                         num_layers=2, num_heads=2, ff_dim=32, positions="start")
    params = random_params(model, 3)
  else:
    model, params = make_hstu(), hstu_params()
  items, times = events(3, MAX_LEN, 3)
  rows, ends = np.arange(3), np.array([2, 5, 9])
  history, history_times = right_padded(items, times, ends, MAX_LEN)
  new, new_times = jnp.asarray(items[:, 0]), jnp.asarray(times[:, 0] + 5e4)  # after the history

  def serve_and_recompute(history_times, new_times):
    """(user vectors after prefill + extend, a full pass over the same events)."""
    _, cache = model.apply(params, history, users=None, timestamps=history_times,
                           method=model.prefill)
    users, _ = model.apply(params, cache, new, users=None, timestamps=new_times,
                           method=model.extend)
    full = history.at[rows, ends].set(new)
    full_times = history_times.at[rows, ends].set(new_times)
    return users, last_hidden(model.apply(params, full, timestamps=full_times), full)

  if name == "sasrec":  # none of its operations is compiled yet: one program is cheaper
    serve_and_recompute = jax.jit(serve_and_recompute)
  users, expected = serve_and_recompute(history_times, new_times)
  np.testing.assert_allclose(users, expected, atol=1e-5)
  if name == "sasrec":
    shifted, _ = serve_and_recompute(history_times + 7e5, new_times - 3e4)
    np.testing.assert_array_equal(users, shifted)
