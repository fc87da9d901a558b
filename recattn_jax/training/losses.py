"""Next-item losses over an item catalogue, and the negative samplers they use.

Every loss takes hidden states [..., D], the catalogue table [N + 1, D] (row 0
is padding and is never a positive or a negative), targets [...] and a `weight`
[...] that is 0 at padded positions, and returns the weighted mean over
positions. Scores are accumulated in float32 whatever the activations' dtype.

Losses are registered in `LOSSES` by name (`train.loss.name`), each a factory
whose keyword arguments are its config fields (`train.loss.<name>.*`), built by
`next_item_loss_fn`:
  * "softmax": cross-entropy over the whole catalogue (SASRec+ / BERT4Rec).
  * "sampled_softmax": cross-entropy over the target and sampled negatives,
    with the log-Q correction logit - log Q(item) (Bengio & Senecal; Yi et al.,
    RecSys 2019) so that it estimates the full softmax. `negative_sampler`:
      - "in_batch": the negatives are the other positions' targets in the batch;
        Q(item) = its frequency among the batch's targets;
      - "uniform": `num_negatives` items drawn uniformly from 1..N, shared
        by every position of the batch; Q = 1/N;
      - "uniform_per_row": as "uniform", drawn afresh for every row (a
        sequence, or a packed row of several) and shared by its positions:
        batch-size times as many distinct negatives at little extra cost;
      - "uniform_per_position": drawn afresh for every position (as RecTools'
        SASRec does); K table rows gathered per position, so it costs the most.
    Negatives equal to the position's target ("accidental hits") are removed.
  * "mixed_softmax": sampled softmax over candidate vectors: sampled positions'
    targets + `num_negatives` uniform items, log-Q by expected counts
    (`CandidateLoss`); only the candidates' item vectors are computed, which
    is what a costly item tower (a fine-tuned text encoder) needs.
  * "bce": SASRec's binary cross-entropy: per position
    -log sigma(s+) - sum_k log(1 - sigma(s_k)) with `num_negatives`
    (default 1) negatives drawn uniformly from the items other than the target.
  * "gbce": gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023): per
    position -(log sigma(s+)^beta + sum_k log(1 - sigma(s_k))) / (k + 1), with
    alpha = k / (N - 1) (the negative sampling rate), and
    beta = alpha * (t * (1 - 1/alpha) + 1/alpha) = 1 - t * (1 - alpha) from the
    calibration parameter `t` in [0, 1]. t = 0 is plain BCE, t = 1 makes the
    model calibrated for the sampling rate.

A loss registered with `item_mask=True` accepts an `item_mask` [N + 1] that
restricts the items it ranges over (`train.negatives="trained"`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from recattn_jax.registry import Registry, check_keywords, keyword_defaults

LOSSES = Registry("loss", "train.loss.name")
SAMPLERS = ("in_batch", "uniform", "uniform_per_row", "uniform_per_position")

# Masked logits: finite, so that a row with every logit masked stays NaN-free.
_MASKED = -1e30

LossFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, dict]]


def weighted_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
  """sum(values * weight) / sum(weight); 0 when every weight is 0."""
  weight = weight.astype(jnp.float32)
  total = jnp.sum(weight)
  return jnp.sum(values * weight) / jnp.where(total > 0, total, 1.0)


def _scores(hidden: jax.Array, rows: jax.Array, equation: str) -> jax.Array:
  return jnp.einsum(equation, hidden, rows.astype(hidden.dtype),
                    preferred_element_type=jnp.float32)


def _target_scores(hidden, item_table, targets):
  return _scores(hidden, jnp.take(item_table, targets, axis=0), "...d,...d->...")


def _negative_scores(hidden, item_table, negatives):
  """[..., K]: shared negatives are [K], per-row or per-position ones [..., K] (broadcast)."""
  rows = jnp.take(item_table, negatives, axis=0)
  if negatives.ndim == 1:
    return _scores(hidden, rows, "...d,kd->...k")
  return _scores(hidden, rows, "...d,...kd->...k")


# ----------------------------------------------------------------------------
# Negative samplers.


def _check_num_items(num_items: int, need: int = 1) -> None:
  if num_items < need:
    raise ValueError(f"negative sampling needs at least {need} items, got num_items={num_items}")


def uniform_negatives(key: jax.Array, shape: tuple[int, ...], num_items: int) -> jax.Array:
  """Item ids drawn uniformly from 1..num_items (never the padding id 0)."""
  _check_num_items(num_items)
  return jax.random.randint(key, shape, 1, num_items + 1, dtype=jnp.int32)


def uniform_negatives_excluding(key: jax.Array, targets: jax.Array, num_items: int,
                                num_negatives: int) -> jax.Array:
  """[..., K] ids drawn uniformly from 1..num_items minus each position's target.

  Drawing from N - 1 values and stepping over the target is exact, so no draw
  is wasted on an accidental hit and the sampling rate is K / (N - 1).
  """
  _check_num_items(num_items, 2)
  draws = jax.random.randint(key, (*targets.shape, num_negatives), 1, num_items,
                             dtype=jnp.int32)
  step = (targets[..., None] > 0) & (draws >= targets[..., None])
  return draws + step.astype(jnp.int32)


# ----------------------------------------------------------------------------
# Losses.


def softmax_cross_entropy(hidden: jax.Array, item_table: jax.Array, targets: jax.Array,
                          weight: jax.Array, item_mask: jax.Array | None = None) -> jax.Array:
  """Full-softmax cross-entropy over items 1..N, or over the items where `item_mask` [N + 1] is True."""
  logits = _scores(hidden, item_table, "...d,nd->...n").at[..., 0].set(_MASKED)
  if item_mask is not None:
    logits = jnp.where(item_mask, logits, _MASKED)
  positive = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return weighted_mean(jax.nn.logsumexp(logits, axis=-1) - positive, weight)


def sampled_softmax(hidden: jax.Array, item_table: jax.Array, targets: jax.Array,
                    negatives: jax.Array, weight: jax.Array, *,
                    log_q_target: jax.Array | float | None = None,
                    log_q_negatives: jax.Array | float | None = None,
                    remove_accidental_hits: bool = True) -> jax.Array:
  """Cross-entropy over the target and sampled negatives.

  Args:
    hidden: [..., D]; item_table: [N + 1, D]; targets, weight: [...].
    negatives: [K] shared by every position, or [..., K] whose leading axes
      broadcast against the positions' ([B, 1, K]: one draw per row); id 0
      entries are ignored.
    log_q_target, log_q_negatives: log sampling probabilities, subtracted from
      the logits (broadcastable to [...] and to the negatives' shape); None
      means no correction.
    remove_accidental_hits: drop negatives equal to the position's target.
  """
  pos = _target_scores(hidden, item_table, targets)
  neg = _negative_scores(hidden, item_table, negatives)
  if log_q_target is not None:
    pos = pos - log_q_target
  if log_q_negatives is not None:
    neg = neg - log_q_negatives
  masked = jnp.broadcast_to(negatives == 0, neg.shape)
  if remove_accidental_hits:
    masked = masked | (negatives == targets[..., None])
  neg = jnp.where(masked, _MASKED, neg)
  logits = jnp.concatenate([pos[..., None], neg], axis=-1)
  return weighted_mean(jax.nn.logsumexp(logits, axis=-1) - pos, weight)


def mixed_softmax(hidden: jax.Array, candidates: jax.Array, candidate_ids: jax.Array,
                  targets: jax.Array, weight: jax.Array, *, uniform_count: float = 0.0,
                  logq_correction: bool = True) -> jax.Array:
  """Cross-entropy of M positions over candidate vectors: their own targets, then sampled items.

  Mixed negative sampling (Yang et al., WWW 2020) for item towers too costly
  to run on the whole catalogue: the item vectors are computed only for the
  candidates. Column m (m < M) is position m's target, the columns after it
  are `uniform_count`-rate uniform draws. A position's positive is its own
  column; other columns with the same item are accidental hits and are
  removed. With `logq_correction` every logit has log E[count] subtracted, the
  item's expected number of columns: its count among the real positions'
  targets plus `uniform_count` (= K / N), so that the sum over columns
  estimates the full softmax's partition function.

  Args:
    hidden: [M, D]; targets, weight: [M] (weight 0: padding, not a column).
    candidates: [M + K, D] vectors of `candidate_ids` [M + K] (id 0: ignored).
  """
  m = targets.shape[0]
  real = jnp.concatenate([weight > 0, candidate_ids[m:] > 0])
  logits = _scores(hidden, candidates, "md,cd->mc")
  same = targets[:, None] == candidate_ids[None, :]
  if logq_correction:
    in_batch = candidate_ids[:, None] == targets[None, :]
    count = jnp.sum(in_batch & (weight > 0)[None, :], axis=1).astype(jnp.float32) + uniform_count
    logits = logits - jnp.log(jnp.maximum(count, 1e-30))[None, :]
  own = jnp.eye(m, candidate_ids.shape[0], dtype=bool)
  logits = jnp.where((real[None, :] & ~same) | own, logits, _MASKED)
  ce = jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits)
  return weighted_mean(ce, weight)


def in_batch_softmax(hidden: jax.Array, item_table: jax.Array, targets: jax.Array,
                     weight: jax.Array, *, logq_correction: bool = True) -> jax.Array:
  """Sampled softmax whose negatives are the batch's other targets (`mixed_softmax` without uniform draws).

  Every real position (weight > 0) is a column; with `logq_correction` every
  logit (the positive's too) has log Q(item) subtracted, Q being the item's
  share of the batch's targets. Memory is O(M^2) for M positions.
  """
  dim = hidden.shape[-1]
  t = targets.reshape(-1)
  return mixed_softmax(hidden.reshape(-1, dim), jnp.take(item_table, t, axis=0), t, t,
                       weight.reshape(-1), logq_correction=logq_correction)


def bce_loss(hidden: jax.Array, item_table: jax.Array, targets: jax.Array,
             negatives: jax.Array, weight: jax.Array) -> jax.Array:
  """SASRec: -log sigma(s+) - sum_k log(1 - sigma(s_k)), averaged over positions."""
  pos = _target_scores(hidden, item_table, targets)
  neg = _negative_scores(hidden, item_table, negatives)
  per_position = jax.nn.softplus(-pos) + jnp.sum(jax.nn.softplus(neg), axis=-1)
  return weighted_mean(per_position, weight)


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
  """beta = alpha * (t * (1 - 1/alpha) + 1/alpha), alpha = k / (N - 1)."""
  if not 0.0 <= t <= 1.0:
    raise ValueError(f"train.loss.gbce.t must lie in [0, 1], got {t}")
  if num_negatives < 1:
    raise ValueError(f"train.loss.gbce.num_negatives must be >= 1, got {num_negatives}")
  _check_num_items(num_items, 2)
  alpha = num_negatives / (num_items - 1)
  return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(hidden: jax.Array, item_table: jax.Array, targets: jax.Array,
              negatives: jax.Array, weight: jax.Array, *, t: float,
              num_items: int | None = None) -> jax.Array:
  """gSASRec's gBCE: -(log sigma(s+)^beta + sum_k log(1 - sigma(s_k))) / (k + 1).

  The paper writes it as BCE on a transformed positive logit s' with
  sigma(s') = sigma(s+)^beta; the positive term is then
  -log sigma(s') = beta * softplus(-s+), which is what is computed here (the
  transformed logit itself overflows once sigma(s+) rounds to 1).
  `num_items` defaults to the table's N.
  """
  num_items = item_table.shape[0] - 1 if num_items is None else num_items
  k = negatives.shape[-1]
  beta = gbce_beta(k, num_items, t)
  pos = _target_scores(hidden, item_table, targets)
  neg = _negative_scores(hidden, item_table, negatives)
  per_position = beta * jax.nn.softplus(-pos) + jnp.sum(jax.nn.softplus(neg), axis=-1)
  return weighted_mean(per_position / (k + 1), weight)


# ----------------------------------------------------------------------------
# Config-driven construction.


def _with_metrics(per_batch: Callable) -> LossFn:
  """(hidden, table, targets, key, item_mask) -> (loss, {"loss", "events"}); targets of 0 weigh nothing."""
  def loss_fn(hidden, item_table, targets, key, item_mask=None):
    weight = (targets > 0).astype(jnp.float32)
    loss = per_batch(hidden, item_table, targets, weight, key, item_mask)
    return loss, {"loss": loss, "events": jnp.sum(weight)}
  return loss_fn


def _no_item_mask(name: str, item_mask) -> None:
  if item_mask is not None:
    raise ValueError(f"train.negatives='trained' needs a loss registered with item_mask=True "
                     f"(e.g. 'softmax'); train.loss.name={name!r} is not")


def _check_negatives(name: str, k: int) -> int:
  if int(k) < 1:
    raise ValueError(f"train.loss.{name}.num_negatives must be >= 1, got {k}")
  return int(k)


@LOSSES.register("softmax", item_mask=True)
def softmax_loss() -> LossFn:
  return _with_metrics(lambda hidden, table, targets, weight, key, item_mask:
                       softmax_cross_entropy(hidden, table, targets, weight, item_mask))


@LOSSES.register("sampled_softmax")
def sampled_softmax_loss(num_negatives: int = 256, negative_sampler: str = "uniform",
                         logq_correction: bool = True) -> LossFn:
  if negative_sampler not in SAMPLERS:
    raise ValueError(f"train.loss.sampled_softmax.negative_sampler must be one of {SAMPLERS}, "
                     f"got {negative_sampler!r}")
  k = _check_negatives("sampled_softmax", num_negatives)

  def loss(hidden, table, targets, weight, key, item_mask):
    _no_item_mask("sampled_softmax", item_mask)
    if negative_sampler == "in_batch":
      return in_batch_softmax(hidden, table, targets, weight, logq_correction=logq_correction)
    num_items = table.shape[0] - 1
    log_q = -jnp.log(float(num_items)) if logq_correction else None
    shape = {"uniform": (k,),
             "uniform_per_row": (*targets.shape[:1], *(1,) * (targets.ndim - 1), k),
             "uniform_per_position": (*targets.shape, k)}[negative_sampler]
    return sampled_softmax(hidden, table, targets, uniform_negatives(key, shape, num_items), weight,
                           log_q_target=log_q, log_q_negatives=log_q)
  return _with_metrics(loss)


@LOSSES.register("bce")
def bce(num_negatives: int = 1) -> LossFn:
  k = _check_negatives("bce", num_negatives)

  def loss(hidden, table, targets, weight, key, item_mask):
    _no_item_mask("bce", item_mask)
    negatives = uniform_negatives_excluding(key, targets, table.shape[0] - 1, k)
    return bce_loss(hidden, table, targets, negatives, weight)
  return _with_metrics(loss)


@LOSSES.register("gbce")
def gbce(num_negatives: int = 256, t: float = 0.75) -> LossFn:
  k = _check_negatives("gbce", num_negatives)
  if not 0.0 <= t <= 1.0:
    raise ValueError(f"train.loss.gbce.t must lie in [0, 1], got {t}")

  def loss(hidden, table, targets, weight, key, item_mask):
    _no_item_mask("gbce", item_mask)
    negatives = uniform_negatives_excluding(key, targets, table.shape[0] - 1, k)
    return gbce_loss(hidden, table, targets, negatives, weight, t=t)
  return _with_metrics(loss)


@dataclasses.dataclass(frozen=True)
class CandidateLoss:
  """A loss over candidate item vectors instead of the whole table (registered with candidates=True).

  `sample` picks up to `positions` of a batch's real positions (0: all of
  them) uniformly without replacement, and the candidates: their targets, then
  `num_negatives` uniform draws; the caller computes the candidates' vectors
  (an item tower runs on those items only) and `__call__` returns the loss and
  metrics. The loss is the mean over the sampled positions, an unbiased
  estimate of the mean over all of them.
  """

  positions: int
  num_negatives: int
  logq_correction: bool = True

  def sample(self, key: jax.Array, targets: jax.Array, num_items: int,
             item_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(flat indices [P] into targets.reshape(-1), candidate ids [P + K]).

    Negatives are drawn uniformly from 1..num_items, or from the items where
    `item_mask` [N + 1] is True.
    """
    flat = targets.reshape(-1)
    position_key, negative_key = jax.random.split(key)
    if self.positions and self.positions < flat.shape[0]:
      # Real positions first, in random order; padding ones only if too few are real.
      priority = jax.random.uniform(position_key, flat.shape) + (flat > 0)
      picked = jax.lax.top_k(priority, self.positions)[1]
    else:
      picked = jnp.arange(flat.shape[0])
    shape = (self.num_negatives,)
    if item_mask is None:
      negatives = uniform_negatives(negative_key, shape, num_items)
    else:
      allowed = jnp.asarray(item_mask).at[0].set(False)
      negatives = jax.random.choice(negative_key, allowed.shape[0], shape, p=allowed / allowed.sum())
    return picked, jnp.concatenate([jnp.take(flat, picked), negatives.astype(flat.dtype)])

  def __call__(self, hidden: jax.Array, candidates: jax.Array, candidate_ids: jax.Array,
               targets: jax.Array, num_items: int,
               item_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """hidden [P, D], targets [P] of the sampled positions; candidates [P + K, D]."""
    weight = (targets > 0).astype(jnp.float32)
    pool = num_items if item_mask is None else jnp.sum(jnp.asarray(item_mask)[1:])
    loss = mixed_softmax(hidden, candidates, candidate_ids, targets, weight,
                         uniform_count=self.num_negatives / pool,
                         logq_correction=self.logq_correction)
    return loss, {"loss": loss, "events": jnp.sum(weight)}


@LOSSES.register("mixed_softmax", candidates=True, item_mask=True)
def mixed_softmax_loss(positions: int = 256, num_negatives: int = 256,
                       logq_correction: bool = True) -> CandidateLoss:
  """Sampled positions' targets + uniform negatives as candidates (`CandidateLoss`)."""
  if int(positions) < 0:
    raise ValueError(f"train.loss.mixed_softmax.positions must be >= 0 (0: all), got {positions}")
  return CandidateLoss(int(positions), _check_negatives("mixed_softmax", num_negatives),
                       bool(logq_correction))


def loss_kwargs(name: str) -> dict:
  """The config fields of loss `name` with their defaults (`train.loss.<name>`)."""
  return keyword_defaults(LOSSES.get(name))


def next_item_loss_fn(name: str = "softmax", **kwargs) -> LossFn | CandidateLoss:
  """The registered loss `name` built with its keyword arguments (`train.loss.<name>.*`).

  Returns (hidden [B, L, D], item_table [N + 1, D], targets [B, L], key,
  item_mask=None) -> (loss, metrics). Targets of 0 are padding and weigh
  nothing. `key` seeds the negatives (unused by "softmax" and in-batch
  "sampled_softmax"). `item_mask` [N + 1] restricts the softmax to some items,
  for losses registered with item_mask=True. A loss registered with
  candidates=True is a `CandidateLoss` instead.
  """
  factory = LOSSES.get(name)
  check_keywords(kwargs, loss_kwargs(name), f"train.loss.{name}")
  return factory(**kwargs)
