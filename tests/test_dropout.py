import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.models.dropout import Dropout, keep_mask


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.2, 0.1, 0.37])
def test_keep_rate_and_independence(rate):
  keep, keep_prob = keep_mask(jax.random.key(0), (400, 500), rate)
  keep = np.asarray(keep)
  assert keep_prob == pytest.approx(1 - rate, abs=2.0 ** -17)
  # 200k Bernoulli draws: the rate is within 5 standard errors.
  assert abs(keep.mean() - keep_prob) < 5 * np.sqrt(keep_prob * (1 - keep_prob) / keep.size)
  # Neighbours come from the same 32-bit word; they must still be uncorrelated.
  a, b = keep.reshape(-1)[0::2].astype(float), keep.reshape(-1)[1::2].astype(float)
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.02


def test_expectation_preserved_and_keys_differ():
  x = jnp.ones((64, 1000))
  layer = Dropout(0.3)
  out = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  other = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
  assert float(out.mean()) == pytest.approx(1.0, abs=0.02)
  values = np.unique(np.asarray(out))
  np.testing.assert_allclose(values, [0.0, 1 / 0.7], rtol=1e-4)
  assert not np.array_equal(np.asarray(out), np.asarray(other))


def test_deterministic_and_edge_rates():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False), x)
  np.testing.assert_array_equal(
      Dropout(1.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}), 0 * x)
  with pytest.raises(ValueError, match="rate"):
    Dropout(1.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})


def test_gradient_is_the_mask_over_keep_prob():
  x = jnp.ones((8, 33))
  key = jax.random.key(3)
  fn = lambda x: Dropout(0.2).apply({}, x, deterministic=False, rngs={"dropout": key}).sum()
  keep_prob = keep_mask(key, x.shape, 0.2)[1]
  grad = np.asarray(jax.grad(fn)(x))
  out = np.asarray(Dropout(0.2).apply({}, x, deterministic=False, rngs={"dropout": key}))
  np.testing.assert_allclose(grad, (out != 0) / keep_prob, rtol=1e-6)
