"""Next-item losses: values and gradients against float64 numpy references, and the samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.training import losses

B, L, D, N, K = 2, 3, 4, 7, 5


def problem(seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(B, L, D))
  table = rng.normal(size=(N + 1, D))
  targets = np.array([[0, 3, 5], [2, 3, 3]], np.int32)  # one padded position, repeats
  return hidden, table, targets


def f32(x):
  return jnp.asarray(x, jnp.float32)


def weight_of(targets):
  return (targets > 0).astype(np.float64)


def logsumexp(x):
  m = np.max(x)
  return m + np.log(np.sum(np.exp(x - m)))


def softplus(x):
  return np.logaddexp(0.0, x)


def np_weighted_mean(values, weight):
  return np.sum(values * weight) / np.sum(weight)


# float64 numpy references, written position by position from the definitions.


def ref_softmax(hidden, table, targets):
  out = np.zeros(targets.shape)
  for idx in np.ndindex(targets.shape):
    logits = table[1:] @ hidden[idx]
    out[idx] = logsumexp(logits) - logits[targets[idx] - 1] if targets[idx] else 0.0
  return np_weighted_mean(out, weight_of(targets))


def ref_sampled(hidden, table, targets, negatives, log_q_pos, log_q_neg):
  out = np.zeros(targets.shape)
  for idx in np.ndindex(targets.shape):
    t = targets[idx]
    if not t:
      continue
    negs = negatives if negatives.ndim == 1 else negatives[idx]
    pos = hidden[idx] @ table[t] - log_q_pos
    logits = [pos] + [hidden[idx] @ table[n] - log_q_neg for n in negs if n != t and n != 0]
    out[idx] = logsumexp(np.array(logits)) - pos
  return np_weighted_mean(out, weight_of(targets))


def ref_in_batch(hidden, table, targets, logq):
  h = hidden.reshape(-1, D)
  t = targets.reshape(-1)
  real = np.flatnonzero(t > 0)
  counts = {item: np.sum(t[real] == item) for item in t[real]}
  losses_ = []
  for i in real:
    logits = []
    for j in real:
      if j != i and t[j] == t[i]:
        continue  # accidental hit
      s = h[i] @ table[t[j]]
      if logq:
        s -= np.log(counts[t[j]] / len(real))
      logits.append((j == i, s))
    pos = [s for is_pos, s in logits if is_pos][0]
    losses_.append(logsumexp(np.array([s for _, s in logits])) - pos)
  return np.mean(losses_)


def ref_bce(hidden, table, targets, negatives):
  out = np.zeros(targets.shape)
  for idx in np.ndindex(targets.shape):
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))
    pos = hidden[idx] @ table[targets[idx]]
    neg = np.array([hidden[idx] @ table[n] for n in negatives[idx]])
    out[idx] = -np.log(sig(pos)) - np.sum(np.log(1.0 - sig(neg)))
  return np_weighted_mean(out, weight_of(targets))


def ref_gbce(hidden, table, targets, negatives, t):
  k = negatives.shape[-1]
  alpha = k / (N - 1)
  beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
  out = np.zeros(targets.shape)
  for idx in np.ndindex(targets.shape):
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))
    pos = hidden[idx] @ table[targets[idx]]
    # The paper's form: BCE on s' with sigma(s') = sigma(s+)^beta.
    p = sig(pos) ** beta
    s_prime = np.log(p / (1.0 - p))
    neg = np.array([hidden[idx] @ table[n] for n in negatives[idx]])
    out[idx] = (softplus(-s_prime) + np.sum(softplus(neg))) / (k + 1)
  return np_weighted_mean(out, weight_of(targets))


def numeric_grad(f, hidden, table, eps=1e-6):
  grads = []
  for which in range(2):
    args = [hidden.copy(), table.copy()]
    g = np.zeros_like(args[which])
    for idx in np.ndindex(g.shape):
      plus = [a.copy() for a in args]
      minus = [a.copy() for a in args]
      plus[which][idx] += eps
      minus[which][idx] -= eps
      g[idx] = (f(*plus) - f(*minus)) / (2 * eps)
    grads.append(g)
  return grads


def check(jax_loss, np_loss, hidden, table):
  """Value and gradients w.r.t. hidden and table agree with the numpy reference."""
  value, grads = jax.value_and_grad(jax_loss, argnums=(0, 1))(
      jnp.asarray(hidden, jnp.float32), jnp.asarray(table, jnp.float32))
  np.testing.assert_allclose(float(value), np_loss(hidden, table), rtol=1e-5, atol=1e-6)
  for got, want in zip(grads, numeric_grad(np_loss, hidden, table)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_softmax_cross_entropy():
  hidden, table, targets = problem()
  w = jnp.asarray(weight_of(targets))
  check(lambda h, tb: losses.softmax_cross_entropy(h, tb, targets, w),
        lambda h, tb: ref_softmax(h, tb, targets), hidden, table)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("log_q", [None, (0.3, -1.2)])
def test_sampled_softmax(shared, log_q):
  hidden, table, targets = problem(1)
  rng = np.random.default_rng(2)
  negatives = rng.integers(1, N + 1, size=(K,) if shared else (B, L, K)).astype(np.int32)
  if shared:
    negatives[:2] = [3, 0]  # an accidental hit for several positions, and a padding id
  else:
    negatives[1, 1, 0] = targets[1, 1]
  q_pos, q_neg = log_q or (None, None)
  w = jnp.asarray(weight_of(targets))
  check(lambda h, tb: losses.sampled_softmax(h, tb, targets, negatives, w,
                                             log_q_target=q_pos, log_q_negatives=q_neg),
        lambda h, tb: ref_sampled(h, tb, targets, negatives, q_pos or 0.0, q_neg or 0.0),
        hidden, table)


@pytest.mark.parametrize("logq", [True, False])
def test_in_batch_softmax(logq):
  hidden, table, targets = problem(3)
  w = jnp.asarray(weight_of(targets))
  check(lambda h, tb: losses.in_batch_softmax(h, tb, targets, w, logq_correction=logq),
        lambda h, tb: ref_in_batch(h, tb, targets, logq), hidden, table)


def test_in_batch_logq_is_a_no_op_for_distinct_targets():
  hidden, table, _ = problem(4)
  targets = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
  w = jnp.ones(targets.shape)
  hidden, table = f32(hidden), f32(table)
  a = losses.in_batch_softmax(hidden, table, targets, w, logq_correction=True)
  b = losses.in_batch_softmax(hidden, table, targets, w, logq_correction=False)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bce():
  hidden, table, targets = problem(5)
  negatives = np.random.default_rng(6).integers(1, N + 1, size=(B, L, 1)).astype(np.int32)
  w = jnp.asarray(weight_of(targets))
  check(lambda h, tb: losses.bce_loss(h, tb, targets, negatives, w),
        lambda h, tb: ref_bce(h, tb, targets, negatives), hidden, table)


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0])
def test_gbce(t):
  hidden, table, targets = problem(7)
  negatives = np.random.default_rng(8).integers(1, N + 1, size=(B, L, 3)).astype(np.int32)
  w = jnp.asarray(weight_of(targets))
  check(lambda h, tb: losses.gbce_loss(h, tb, targets, negatives, w, t=t),
        lambda h, tb: ref_gbce(h, tb, targets, negatives, t), hidden, table)


def test_gbce_beta_endpoints_and_bce_relation():
  # t = 0: beta = 1 (plain BCE); t = 1: beta = alpha = k / (N - 1).
  assert losses.gbce_beta(3, 7, 0.0) == pytest.approx(1.0)
  assert losses.gbce_beta(3, 7, 1.0) == pytest.approx(0.5)
  assert losses.gbce_beta(256, 3417, 0.75) == pytest.approx(1 - 0.75 * (1 - 256 / 3416))
  hidden, table, targets = problem(9)
  hidden, table = f32(hidden), f32(table)
  negatives = np.random.default_rng(10).integers(1, N + 1, size=(B, L, 2)).astype(np.int32)
  w = jnp.asarray(weight_of(targets))
  np.testing.assert_allclose(losses.gbce_loss(hidden, table, targets, negatives, w, t=0.0) * 3,
                             losses.bce_loss(hidden, table, targets, negatives, w), rtol=1e-6)
  with pytest.raises(ValueError, match="train.loss.gbce.t"):
    losses.gbce_beta(3, 7, 1.5)


def test_gbce_large_logit_stays_finite():
  hidden = jnp.full((1, 1, 1), 60.0)
  table = jnp.ones((3, 1))
  targets = jnp.array([[1]])
  negatives = jnp.array([[[2]]])
  grad = jax.grad(lambda h: losses.gbce_loss(h, table, targets, negatives, jnp.ones((1, 1)),
                                             t=0.75))(hidden)
  assert np.isfinite(np.asarray(grad)).all()


def test_padding_positions_do_not_matter():
  hidden, table, targets = problem(11)
  fn = losses.next_item_loss_fn("sampled_softmax", negative_sampler="in_batch")
  key = jax.random.PRNGKey(0)
  a, metrics = fn(f32(hidden), f32(table), targets, key)
  hidden2 = hidden.copy()
  hidden2[0, 0] = 100.0  # the padded position
  b, _ = fn(f32(hidden2), f32(table), targets, key)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  assert float(metrics["events"]) == 5


def test_samplers():
  key = jax.random.PRNGKey(0)
  draws = np.asarray(losses.uniform_negatives(key, (20000,), 9))
  assert draws.min() == 1 and draws.max() == 9
  counts = np.bincount(draws, minlength=10)[1:]
  assert np.all(np.abs(counts / 20000 - 1 / 9) < 0.01)
  targets = jnp.asarray(np.random.default_rng(0).integers(0, 10, size=(50, 8)), jnp.int32)
  neg = np.asarray(losses.uniform_negatives_excluding(key, targets, 9, 60))
  assert neg.shape == (50, 8, 60) and neg.min() >= 1 and neg.max() <= 9
  real = np.asarray(targets)[..., None] > 0
  assert not np.any((neg == np.asarray(targets)[..., None]) & real)
  # Uniform over the 8 other items: every one of them is drawn about equally.
  t3 = np.asarray(targets) == 3
  counts = np.bincount(neg[t3].ravel(), minlength=10)
  assert counts[0] == counts[3] == 0
  share = counts[[1, 2, 4, 5, 6, 7, 8, 9]] / counts.sum()
  assert np.all(np.abs(share - 1 / 8) < 0.03)
  # Same key, same draws.
  np.testing.assert_array_equal(neg, losses.uniform_negatives_excluding(key, targets, 9, 60))


@pytest.mark.parametrize("name,kwargs", [
    ("softmax", {}), ("sampled_softmax", {"negative_sampler": "uniform", "num_negatives": 4}),
    ("sampled_softmax", {"negative_sampler": "in_batch"}),
    ("sampled_softmax", {"negative_sampler": "uniform_per_row", "num_negatives": 4}),
    ("sampled_softmax", {"negative_sampler": "uniform_per_position", "num_negatives": 4}), ("bce", {}),
    ("gbce", {"num_negatives": 3, "t": 0.5})])
def test_next_item_loss_fn_jits_and_differentiates(name, kwargs):
  hidden, table, targets = problem(12)
  hidden, table = f32(hidden), f32(table)
  fn = losses.next_item_loss_fn(name, **kwargs)
  key = jax.random.PRNGKey(1)
  loss, metrics = jax.jit(fn)(hidden, table, targets, key)
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert set(metrics) == {"loss", "events"}
  grads = jax.grad(lambda h, tb: fn(h, tb, targets, key)[0], argnums=(0, 1))(hidden, table)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_uniform_sampled_softmax_matches_manual_negatives():
  hidden, table, targets = problem(13)
  key = jax.random.PRNGKey(5)
  fn = losses.next_item_loss_fn("sampled_softmax", num_negatives=6)
  negatives = losses.uniform_negatives(key, (6,), N)
  want = ref_sampled(hidden, table, targets, np.asarray(negatives), -np.log(N), -np.log(N))
  np.testing.assert_allclose(float(fn(f32(hidden), f32(table), targets, key)[0]), want, rtol=1e-5)


@pytest.mark.parametrize("sampler,shape", [("uniform_per_row", (B, 1, 6)),
                                           ("uniform_per_position", (B, L, 6))])
def test_per_row_and_per_position_negatives_match_manual_draws(sampler, shape):
  hidden, table, targets = problem(14)
  key = jax.random.PRNGKey(6)
  fn = losses.next_item_loss_fn("sampled_softmax", num_negatives=6, negative_sampler=sampler)
  negatives = np.asarray(losses.uniform_negatives(key, shape, N))
  # Rows draw different negatives (else this would not test what it names).
  assert len({tuple(n) for n in negatives.reshape(-1, 6)}) > 1
  want = ref_sampled(hidden, table, targets, np.broadcast_to(negatives, (B, L, 6)),
                     -np.log(N), -np.log(N))
  loss, _ = fn(f32(hidden), f32(table), targets, key)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  grad = jax.grad(lambda h: fn(h, f32(table), targets, key)[0])(f32(hidden))
  want_grad = np.zeros_like(hidden)
  eps = 1e-3
  for idx in [(0, 1, 0), (B - 1, L - 1, D - 1)]:
    bumped = hidden.copy()
    bumped[idx] += eps
    up = ref_sampled(bumped, table, targets, np.broadcast_to(negatives, (B, L, 6)), 0, 0)
    bumped[idx] -= 2 * eps
    down = ref_sampled(bumped, table, targets, np.broadcast_to(negatives, (B, L, 6)), 0, 0)
    want_grad[idx] = (up - down) / (2 * eps)
    np.testing.assert_allclose(float(grad[idx]), want_grad[idx], rtol=1e-3, atol=1e-5)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="train.loss.name='hinge' is not a known loss"):
    losses.next_item_loss_fn("hinge")
  with pytest.raises(ValueError, match="train.loss.sampled_softmax.negative_sampler"):
    losses.next_item_loss_fn("sampled_softmax", negative_sampler="popularity")
  with pytest.raises(ValueError, match="train.loss.bce.num_negatives"):
    losses.next_item_loss_fn("bce", num_negatives=0)
  with pytest.raises(ValueError, match="train.loss.gbce.t"):
    losses.next_item_loss_fn("gbce", t=-0.1)
  with pytest.raises(ValueError, match=r"train.loss.gbce: unknown field\(s\) \['gbce_t'\]"):
    losses.next_item_loss_fn("gbce", gbce_t=0.5)


def test_softmax_item_mask_restricts_the_catalogue_and_other_losses_refuse_it():
  rng = np.random.default_rng(7)
  hidden = rng.normal(size=(3, 4, 5)).astype(np.float32)
  table = rng.normal(size=(9, 5)).astype(np.float32)
  targets = np.array([[1, 2, 0, 4], [4, 4, 1, 2], [0, 0, 2, 1]], np.int32)
  mask = np.array([False, True, True, False, True, False, False, True, False])
  loss, _ = losses.next_item_loss_fn("softmax")(hidden, table, targets, jax.random.key(0), mask)
  logits = hidden.astype(np.float64) @ table.T.astype(np.float64)
  logits = np.where(mask, logits, -np.inf)
  ce = np.log(np.exp(logits).sum(-1)) - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  expected = ce[targets > 0].mean()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="train.negatives"):
    losses.next_item_loss_fn("bce")(hidden, table, targets, jax.random.key(0), mask)
