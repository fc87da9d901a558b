"""Prediction heads: shapes, arithmetic, dropout and config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.models.heads import LinearHead, MLPHead, ResidualMLPHead, build_head

X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)


@pytest.mark.parametrize("name", ["linear", "mlp", "residual_mlp"])
@pytest.mark.parametrize("out", [1, 3])
def test_shapes(name, out):
  head = build_head(name, out=out, hidden=(8, 4), num_blocks=2)
  params = head.init(jax.random.PRNGKey(0), X)
  assert head.apply(params, X).shape == (2, 3, out)


def test_linear_is_affine():
  head = LinearHead(out=2)
  params = head.init(jax.random.PRNGKey(0), X)
  p = params["params"]["output"]
  np.testing.assert_allclose(head.apply(params, X), X @ p["kernel"] + p["bias"], rtol=1e-5,
                             atol=1e-6)


def test_mlp_matches_manual():
  head = MLPHead(hidden=(6,), activation="tanh")
  params = head.init(jax.random.PRNGKey(1), X)
  p = params["params"]
  h = jnp.tanh(X @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])
  want = h @ p["output"]["kernel"] + p["output"]["bias"]
  np.testing.assert_allclose(head.apply(params, X), want, rtol=1e-5, atol=1e-6)


def test_residual_blocks_start_from_the_projection():
  # With zero-initialised down-projections every block is the identity.
  head = ResidualMLPHead(width=8, num_blocks=3)
  params = head.init(jax.random.PRNGKey(2), X)
  p = jax.tree_util.tree_map(lambda a: a, params)
  for i in range(3):
    p["params"][f"down_{i}"]["kernel"] = jnp.zeros_like(p["params"][f"down_{i}"]["kernel"])
    p["params"][f"down_{i}"]["bias"] = jnp.zeros_like(p["params"][f"down_{i}"]["bias"])
  no_blocks = ResidualMLPHead(width=8, num_blocks=0)
  q = {"params": {k: p["params"][k] for k in ("input", "final_norm", "output")}}
  np.testing.assert_allclose(head.apply(p, X), no_blocks.apply(q, X), rtol=1e-5, atol=1e-6)


def test_dropout_only_when_training():
  head = build_head("mlp", hidden=(64,), dropout=0.5)
  params = head.init(jax.random.PRNGKey(0), X)
  a = head.apply(params, X)
  np.testing.assert_array_equal(a, head.apply(params, X, deterministic=True))
  b = head.apply(params, X, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(a, b)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"model.\*.head='transformer' is not a known head"):
    build_head("transformer")
  with pytest.raises(ValueError, match="model.\\*.head_activation"):
    build_head("mlp", activation="swish2")
  with pytest.raises(ValueError, match="head_dropout"):
    build_head("mlp", dropout=1.0)
  with pytest.raises(ValueError, match="head_hidden"):
    build_head("residual_mlp", hidden=())
  with pytest.raises(ValueError, match="head_hidden"):
    build_head("mlp", hidden=(0,))
