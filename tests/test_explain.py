"""Attention capture in the transformer blocks and the explanation helpers built on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.attention import MaskSpec, attention_fn
from recattn_jax.evaluation.topk import top_k_items
from recattn_jax.explain import (Explanation, attention_over_history, attention_weights_by_layer,
                                 plot_attention_heatmap)
from recattn_jax.models import SASRec, last_hidden
from recattn_jax.models.transformer import (MultiHeadSelfAttention, TransformerBlock,
                                            capture_attention_weights)


def test_captured_weights_are_the_attention_the_block_computes():
  """Rows sum to 1 over visible keys, 0 on padding and future keys, and weights @ v is the output."""
  mha = MultiHeadSelfAttention(features=8, num_heads=2, attention_fn=attention_fn("blockwise"))
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  valid = jnp.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)  # left and right padding
  mask = MaskSpec(causal=True, kv_valid=valid)
  params = mha.init(jax.random.key(1), x, mask)
  expected, k, v = mha.apply(params, x, mask)
  (out, k2, v2), state = mha.apply(params, x, mask, capture_attention=True, mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (2, 2, 6, 6)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  np.testing.assert_array_equal(k2, k)
  np.testing.assert_array_equal(v2, v)

  visible = np.tril(np.ones((6, 6), bool))[None] & np.asarray(valid)[:, None, :]  # [B, q, k]
  weights = np.asarray(weights)
  assert np.all(weights[np.broadcast_to(~visible[:, None], weights.shape)] == 0)
  row_sums = weights.sum(-1)  # [B, H, q]
  sees_something = np.broadcast_to(visible.any(-1)[:, None], row_sums.shape)
  np.testing.assert_allclose(row_sums[sees_something], 1.0, atol=1e-5)
  # Left-padded queries see nothing: all-zero rows, not NaN.
  np.testing.assert_array_equal(row_sums[0, :, :2], 0.0)

  heads = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
  recomposed = mha.apply(params, heads, method=lambda m, h: m.out(h))
  np.testing.assert_allclose(recomposed, expected, atol=1e-5)


def test_block_flag_and_interceptor_capture_the_same_without_changing_outputs():
  block = TransformerBlock(features=8, num_heads=2, ff_dim=16, dropout_rate=0.0)
  x = jax.random.normal(jax.random.key(2), (1, 5, 8))
  valid = jnp.ones((1, 5), bool)
  mask = MaskSpec(causal=True)
  params = block.init(jax.random.key(3), x, mask, valid, True)
  assert set(params["params"]) == {"attention_norm", "attention", "ff_norm", "ff"}
  assert set(params["params"]["attention"]) == {"qkv", "out"}
  plain, _, _ = block.apply(params, x, mask, valid, True)
  (flagged, _, _), by_flag = block.apply(params, x, mask, valid, True, capture_attention=True,
                                         mutable=["intermediates"])
  with capture_attention_weights():
    (intercepted, _, _), by_context = block.apply(params, x, mask, valid, True,
                                                  mutable=["intermediates"])
  np.testing.assert_allclose(flagged, plain, atol=1e-5)
  np.testing.assert_allclose(intercepted, plain, atol=1e-5)
  np.testing.assert_array_equal(attention_weights_by_layer(by_flag["intermediates"])[0],
                                attention_weights_by_layer(by_context["intermediates"])[0])
  # Nothing is sown unless asked.
  _, state = block.apply(params, x, mask, valid, True, mutable=["intermediates"])
  assert not state.get("intermediates")


@pytest.fixture(scope="module")
def sasrec():
  model = SASRec(num_items=30, max_len=8, embed_dim=16, num_layers=2, num_heads=2, ff_dim=32,
                 positions="start")
  params = jax.jit(model.init)(jax.random.key(4), jnp.zeros((1, 8), jnp.int32))
  return model, params


def test_attention_over_history_at_the_newest_event(sasrec):
  model, params = sasrec
  histories = [[3, 7, 7, 12], [5, 1, 2, 3, 4, 6, 8, 9, 10, 11]]  # the second is truncated to 8
  explanations = attention_over_history(model, params, histories, item=[4, 13], top_k=5)
  for h, e in zip(histories, explanations):
    seen = np.asarray(h[-8:])
    np.testing.assert_array_equal(e.history, seen)
    assert e.weights.shape == (2, 2, len(seen))
    # The newest event sees every event of the history: each head sums to 1.
    np.testing.assert_allclose(e.weights.sum(-1), 1.0, atol=1e-5)
    assert (e.weights >= 0).all()
    assert e.items.shape == e.scores.shape == (5,)
    assert not set(e.items.tolist()) & set(h) and 0 not in e.items
    assert np.all(np.diff(e.scores) <= 0)

  # Same scores as scoring the model's user vector directly.
  inputs = np.zeros((1, 8), np.int32)
  inputs[0, -4:] = histories[0]
  users = last_hidden(model.apply(params, jnp.asarray(inputs)), jnp.asarray(inputs))
  table = model.apply(params, method="item_embeddings")
  scores, ids = top_k_items(users, table, 5, jnp.asarray([histories[0]]))
  np.testing.assert_array_equal(explanations[0].items, ids[0])
  np.testing.assert_allclose(explanations[0].scores, scores[0], rtol=1e-5)
  all_scores = np.asarray(users @ table.T)[0]
  assert explanations[0].item_score == pytest.approx(float(all_scores[4]), rel=1e-5)
  others = np.setdiff1d(np.arange(1, 31), [3, 7, 12, 4])
  assert explanations[0].item_rank == int(np.sum(all_scores[others] >= all_scores[4]))


def test_padding_side_does_not_change_the_explanation(sasrec):
  model, params = sasrec
  left = attention_over_history(model, params, np.array([4, 9, 2]), top_k=3, padding="left")
  right = attention_over_history(model, params, np.array([4, 9, 2]), top_k=3, padding="right")
  assert isinstance(left, Explanation) and left.item is None and left.item_rank is None
  np.testing.assert_allclose(left.weights, right.weights, atol=1e-5)
  np.testing.assert_array_equal(left.items, right.items)


def test_heatmap_has_a_row_per_layer_and_head_and_titles_on_x(tmp_path):
  weights = np.random.default_rng(0).dirichlet(np.ones(4), size=(2, 3))
  titles = ["Toy Story (1995)", "GoldenEye (1995)", "A very long title " * 4, "Heat (1995)"]
  fig = plot_attention_heatmap(weights, titles, title="user 1")
  ax = fig.axes[0]
  assert ax.images[0].get_array().shape == (6, 4)
  assert [t.get_text() for t in ax.get_xticklabels()][:2] == titles[:2]
  assert ax.get_xticklabels()[2].get_text().endswith("\u2026")
  assert ax.get_yticklabels()[4].get_text() == "layer 2 head 2"
  fig.savefig(tmp_path / "heatmap.png")
  assert (tmp_path / "heatmap.png").stat().st_size > 0
  with pytest.raises(ValueError, match="weights must be"):
    plot_attention_heatmap(weights, titles[:3])


def test_recommend_lists_match_the_explanations(sasrec):
  from recattn_jax.evaluation.topk import recommend  # pylint: disable=g-import-not-at-top
  model, params = sasrec
  histories = [np.array([3, 7, 12]), np.array([5, 1, 2, 3, 4, 6, 8, 9, 10, 11]), np.array([30])]
  ids, scores = recommend(model, params, histories, k=4, max_len=8, batch_size=2)
  assert ids.shape == scores.shape == (3, 4)
  for row, e in enumerate(attention_over_history(model, params, histories, top_k=4)):
    np.testing.assert_array_equal(ids[row], e.items)
    np.testing.assert_allclose(scores[row], e.scores, rtol=1e-5)


def _bert4rec_and_context_models():
  from recattn_jax.data.social import UserProfiles  # pylint: disable=g-import-not-at-top
  from recattn_jax.models import init_encoder  # pylint: disable=g-import-not-at-top
  from tests.helpers import make_encoder  # pylint: disable=g-import-not-at-top
  profiles = UserProfiles(items=np.array([[0, 0], [4, 5], [9, 0]], np.int32),
                          weights=np.array([[0, 0], [0.5, 0.5], [1, 0]], np.float32))
  out = []
  for name, user_profiles in (("bert4rec", None), ("sasrec", profiles)):
    model = make_encoder(name, num_items=30, max_len=8, user_profiles=user_profiles, embed_dim=16,
                         num_heads=2, ff_dim=32)
    params = init_encoder(model, jax.random.key(7), 8)
    # Non-zero output bias / context projection, so that leaving either out would show.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (jax.random.normal(jax.random.key(8), x.shape)
                         if any(getattr(k, "key", None) in ("output_bias", "project") for k in path)
                         else x), params)
    out.append((model, params))
  return out


@pytest.mark.parametrize("which", [0, 1], ids=["bert4rec_mask_and_bias", "sasrec_friend_context"])
def test_recommend_and_explain_score_as_the_model_does(which):
  from recattn_jax.data.pipeline import pad_to  # pylint: disable=g-import-not-at-top
  from recattn_jax.evaluation.topk import recommend  # pylint: disable=g-import-not-at-top
  from recattn_jax.models import fold_item_bias  # pylint: disable=g-import-not-at-top
  model, params = _bert4rec_and_context_models()[which]
  histories = [np.array([3, 7, 12]), np.array([5, 1, 2, 3, 4, 6, 8, 9, 10, 11])]
  mask_id = getattr(model, "mask_id", None)
  users = [0, 1] if mask_id is None else None
  ids, scores = recommend(model, params, histories, k=4, max_len=8, batch_size=2, users=users)
  explanations = attention_over_history(model, params, histories, top_k=4, user=users)
  for row, h in enumerate(histories):
    # By hand: BERT4Rec reads the newest 7 events and a mask token and adds its output bias.
    inputs = h if mask_id is None else np.append(h[-7:], mask_id)
    inputs = jnp.asarray(pad_to(inputs, 8, "left"))[None]
    kwargs = {} if users is None else {"users": jnp.full_like(inputs, users[row] + 1)}
    user = last_hidden(model.apply(params, inputs, **kwargs), inputs)
    table = model.apply(params, method="item_embeddings")
    if mask_id is not None:
      user, table = fold_item_bias(user, table, model.apply(params, method="item_bias"))
    expected_scores, expected_ids = top_k_items(user, table, 4, jnp.asarray([h]))
    np.testing.assert_array_equal(ids[row], expected_ids[0])
    np.testing.assert_allclose(scores[row], expected_scores[0], rtol=1e-5)
    np.testing.assert_array_equal(explanations[row].items, expected_ids[0])
    history = np.asarray(inputs)[0][np.asarray(inputs)[0] > 0]
    if mask_id is not None:
      history = history[:-1]  # the mask token is the query, not part of the explained history
    np.testing.assert_array_equal(explanations[row].history, history)


def test_hstu_pointwise_weights_are_captured_and_explain_its_output():
  from recattn_jax.models import HSTU  # pylint: disable=g-import-not-at-top
  model = HSTU(num_items=30, max_len=8, embed_dim=16, num_layers=2, num_heads=2)
  params = jax.jit(model.init)(jax.random.key(9), jnp.zeros((1, 8), jnp.int32))
  items = jnp.asarray([[0, 0, 3, 7, 12, 5, 9, 4]])
  plain = model.apply(params, items)
  with capture_attention_weights():
    captured, state = model.apply(params, items, mutable=["intermediates"])
  np.testing.assert_allclose(captured, plain, atol=1e-5)
  layers = attention_weights_by_layer(state["intermediates"])
  assert len(layers) == 2 and layers[0].shape == (1, 2, 8, 8)
  weights = np.asarray(layers[0])
  # Causal and padded keys get exactly zero; pointwise weights are not a distribution.
  assert np.all(weights[..., np.triu_indices(8, 1)[0], np.triu_indices(8, 1)[1]] == 0)
  assert np.all(weights[..., :2] == 0) and np.any(np.abs(weights.sum(-1)[..., 2:] - 1) > 1e-3)
  explanation = attention_over_history(model, params, [3, 7, 12, 5, 9, 4], top_k=3)
  np.testing.assert_allclose(explanation.weights, np.stack(layers)[:, 0, :, -1, 2:], atol=1e-6)


def test_ids_outside_the_catalogue_are_named_not_scored_as_nan(sasrec):
  from recattn_jax.evaluation.topk import recommend  # pylint: disable=g-import-not-at-top
  model, params = sasrec[:2]
  with pytest.raises(ValueError, match=r"outside the catalogue 1\.\.\d+: 5000"):
    attention_over_history(model, params, [3, 5000])
  with pytest.raises(ValueError, match="outside the catalogue"):
    attention_over_history(model, params, [3], item=5000)
  with pytest.raises(ValueError, match="outside the catalogue"):
    recommend(model, params, [np.asarray([5000])], k=3, max_len=model.max_len)
