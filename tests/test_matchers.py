"""Matchers: catalogue dot products and target attention (weights equal to what attend used)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.attention import attention_fn
from recattn_jax.models.matchers import TargetAttention
from recattn_jax.models.scoring import catalogue_logits


def test_catalogue_dot_products_mask_padding():
  rng = np.random.default_rng(0)
  users = rng.normal(size=(3, 4)).astype(np.float32)
  table = rng.normal(size=(6, 4)).astype(np.float32)
  scores = np.asarray(catalogue_logits(jnp.asarray(users), jnp.asarray(table)))
  assert scores.dtype == np.float32 and np.all(scores[:, 0] == np.float32(-1e30))
  np.testing.assert_allclose(scores[:, 1:], (users @ table.T)[:, 1:], rtol=1e-5)
  with pytest.raises((TypeError, ValueError)):
    catalogue_logits(jnp.asarray(users), jnp.asarray(table[:, :3]))


def inputs(seed=0, b=3, c=2, l=6, d=8):
  rng = np.random.default_rng(seed)
  candidates = jnp.asarray(rng.normal(size=(b, c, d)), jnp.float32)
  history = jnp.asarray(rng.normal(size=(b, l, d)), jnp.float32)
  valid = np.ones((b, l), bool)
  valid[0, :2] = False  # left padding
  valid[2, :] = False  # no history at all
  return candidates, history, jnp.asarray(valid)


def manual_z(params, history, weights):
  """Output projection of sum_l weights * V, computed from the parameters."""
  p = params["params"]
  v = jnp.einsum("bld,dhk->blhk", history, p["value"]["kernel"]) + p["value"]["bias"]
  heads = jnp.einsum("bchl,blhk->bchk", weights, v)
  return jnp.einsum("bchk,hkf->bcf", heads, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("num_heads", [1, 2])
@pytest.mark.parametrize("impl", ["reference", "xla", "blockwise"])
def test_weights_are_what_attend_used(num_heads, impl):
  candidates, history, valid = inputs()
  module = TargetAttention(num_heads=num_heads, attention_fn=attention_fn(impl))
  params = module.init(jax.random.PRNGKey(0), candidates, history, valid)
  z, weights = module.apply(params, candidates, history, valid, return_weights=True)
  assert z.shape == (3, 2, 8) and weights.shape == (3, 2, num_heads, 6)
  w = np.asarray(weights)
  np.testing.assert_allclose(w[:2].sum(-1), 1.0, rtol=1e-5)
  assert np.all(w[0, ..., :2] == 0) and np.all(w[2] == 0)
  np.testing.assert_allclose(z, manual_z(params, history, weights), rtol=1e-4, atol=1e-5)
  # The empty-history row is the output bias.
  np.testing.assert_allclose(z[2], jnp.broadcast_to(params["params"]["out"]["bias"], (2, 8)),
                             atol=1e-6)
  # Without weights the same z.
  np.testing.assert_allclose(module.apply(params, candidates, history, valid), z, rtol=1e-6)


def test_padded_history_entries_do_not_matter():
  candidates, history, valid = inputs(1)
  module = TargetAttention(num_heads=2, attention_fn=attention_fn("reference"))
  params = module.init(jax.random.PRNGKey(1), candidates, history, valid)
  noisy = history.at[0, :2].set(50.0)
  np.testing.assert_allclose(module.apply(params, candidates, history, valid),
                             module.apply(params, candidates, noisy, valid), rtol=1e-6)


def test_single_candidate_and_feature_width():
  candidates, history, valid = inputs(2)
  module = TargetAttention(num_heads=2, features=4, attention_fn=attention_fn("reference"))
  params = module.init(jax.random.PRNGKey(2), candidates[:, 0], history, valid)
  z, weights = module.apply(params, candidates[:, 0], history, valid, return_weights=True)
  assert z.shape == (3, 4) and weights.shape == (3, 2, 6)
  z_all = module.apply(params, candidates, history, valid)
  np.testing.assert_allclose(z, z_all[:, 0], rtol=1e-5)


def test_candidates_are_independent():
  candidates, history, valid = inputs(3)
  module = TargetAttention(attention_fn=attention_fn("reference"))
  params = module.init(jax.random.PRNGKey(3), candidates, history, valid)
  z = module.apply(params, candidates, history, valid)
  z1 = module.apply(params, candidates[:, 1:], history, valid)
  np.testing.assert_allclose(z[:, 1:], z1, rtol=1e-5)


def test_bad_shapes():
  candidates, history, valid = inputs()
  module = TargetAttention(num_heads=3)
  with pytest.raises(ValueError, match="num_heads"):
    module.init(jax.random.PRNGKey(0), candidates, history, valid)
  with pytest.raises(ValueError, match="valid"):
    TargetAttention().init(jax.random.PRNGKey(0), candidates, history, valid[:, 1:])
