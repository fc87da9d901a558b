"""`CandidateScorer`: a click (CTR) or rating bundle that scores candidates for a history.

The models (DIN, BST; `models.ctr`) read the history once and let every
candidate attend to it: the history is encoded once per request and all
candidates are scored in the same pass, each attending to the history only
and never to another candidate (as in HSTU's M-FALCON), so one call scores C
candidates for the cost of one history plus C target attentions. Scores are
click probabilities ("ctr") or predicted ratings ("rating").
"""

from __future__ import annotations

import functools
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recattn_jax.data.pipeline import pad_to
from recattn_jax.models import build_pointwise_model
from recattn_jax.serving.lists import Recommendation, Vocabulary, list_length
from recattn_jax.serving.recommender import Recommender, restore_params
from recattn_jax.training import pointwise_task
from recattn_jax.training.bundle import Bundle, BundleError, read_bundle

CANDIDATE_CHUNK = 2048  # candidates scored in one call


@functools.partial(jax.jit, static_argnames=("model", "task"))
def _score(model, params, users, history, candidates, history_ratings, *, task):
  outputs = model.apply(params, users, history, candidates, history_ratings, deterministic=True)
  return jax.nn.sigmoid(outputs) if task == "ctr" else outputs


class CandidateScorer:
  """A loaded click/rating bundle; see the module docstring."""

  def __init__(self, bundle: Bundle):
    config = bundle.config
    if config.task not in pointwise_task.TASKS:
      raise BundleError(f"{bundle.path} holds a task={config.task!r} model, not a click/rating one")
    data = bundle.data
    self.bundle, self.config, self.task = bundle, config, config.task
    self.max_len = int(config.data.max_len)
    self.items = Vocabulary(data.item_ids, "item", first=1)
    self.users = Vocabulary(data.user_ids, "user")
    self.model = build_pointwise_model(
        config.model, task=self.task, num_items=len(data.item_ids) - 1,
        num_users=len(data.user_ids), max_len=self.max_len,
        global_mean=float(data.stats.get("train_label_mean", 0.0)),
        item_features=data.item_features)
    example = {"users": np.zeros(1, np.int32), "history": np.zeros((1, self.max_len), np.int32),
               "items": np.zeros(1, np.int32)}
    if self.model.use_ratings:
      example["history_ratings"] = np.zeros((1, self.max_len), np.float32)
    template = jax.eval_shape(pointwise_task.init_params(self.model, example), jax.random.key(0))
    self.params = restore_params(template, bundle.params, bundle.path)

  @classmethod
  def load(cls, path: str | pathlib.Path) -> "CandidateScorer":
    return cls(read_bundle(path))

  def _inputs(self, user, history, ratings, unknown):
    """(users [1], history [1, L] left-padded, ratings [1, L] or None, all history ids)."""
    if user is not None:
      (index,), _, _ = self.users.lookup([user])
      if history is None:
        history = self.items.ids[self.bundle.data.histories[index]]
        if self.model.use_ratings:
          ratings = self.bundle.data.history_ratings[index]
    else:
      index = 0
      if self.model.user_count:
        raise ValueError("this model has a user embedding (model.*.use_user_embedding): pass user=")
    ids, kept, _ = self.items.lookup(list(history if history is not None else []), unknown)
    history_row = pad_to(ids[-self.max_len:], self.max_len, "left")[None]
    ratings_row = None
    if self.model.use_ratings:
      if ratings is None or len(ratings) != len(kept):
        raise ValueError("this model reads the history's ratings (model.*.use_ratings): pass "
                         "ratings= with one rating per history event")
      ratings_row = pad_to(np.asarray(ratings, np.float32)[kept][-self.max_len:], self.max_len,
                           "left", np.float32)[None]
    return np.asarray([index], np.int32), history_row, ratings_row, ids

  def score(self, candidates: Sequence, *, history: Sequence | None = None, user=None,
            ratings: Sequence | None = None, unknown: str = "error") -> np.ndarray:
    """Click probabilities or ratings [C] of `candidates` (original item ids) for one user.

    `history` (original item ids, oldest first; default: a known `user`'s
    events in the run's data) is encoded once for all candidates.
    """
    cand, _, _ = self.items.lookup(list(candidates))
    users, history_row, ratings_row, _ = self._inputs(user, history, ratings, unknown)
    return self._score_internal(users, history_row, ratings_row, cand)

  def _score_internal(self, users, history_row, ratings_row, candidates: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(candidates), CANDIDATE_CHUNK):
      chunk = candidates[start:start + CANDIDATE_CHUNK]
      width = min(CANDIDATE_CHUNK, list_length(len(chunk)))
      padded = np.zeros((1, width), np.int32)
      padded[0, :len(chunk)] = chunk
      scores = _score(self.model, self.params, jnp.asarray(users), jnp.asarray(history_row),
                      jnp.asarray(padded), None if ratings_row is None else jnp.asarray(ratings_row),
                      task=self.task)
      out.append(np.asarray(scores)[0, :len(chunk)])
    return np.concatenate(out) if out else np.zeros(0, np.float32)

  def recommend(self, history: Sequence | None = None, k: int = 10, *, user=None,
                ratings: Sequence | None = None, exclude_seen: bool = True,
                unknown: str = "error") -> Recommendation:
    """The `k` items of highest predicted click probability / rating, over the whole catalogue."""
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self.items):
      raise ValueError(f"k must be an integer in [1, {len(self.items)}], got {k!r}")
    users, history_row, ratings_row, seen = self._inputs(user, history, ratings, unknown)
    scores = self._score_internal(users, history_row, ratings_row,
                                  np.arange(1, len(self.items) + 1, dtype=np.int32))
    if exclude_seen:
      scores[seen - 1] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    order = order[np.isfinite(scores[order])]
    return Recommendation(items=list(self.items.ids[order + 1]), scores=scores[order])


def load(path: str | pathlib.Path):
  """The served model of any bundle: a `Recommender` (ranking) or a `CandidateScorer`."""
  bundle = read_bundle(path)
  return Recommender(bundle) if bundle.config.task == "ranking" else CandidateScorer(bundle)
