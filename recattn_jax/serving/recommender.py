"""`Recommender`: a trained ranking model that recommends by original item and user ids.

    rec = Recommender.load("runs/sasrec/bundle")
    rec.recommend(history=["50", "172", "133"], k=10)          # one history
    rec.recommend(history=[["50"], ["1", "2"]], k=10)          # a batch
    rec.recommend_users(["196", "186"], k=10)                  # users the run knew

Ids are the original ones of the training data, compared as strings. What a
request can hold and what happens to it:
  * unknown item ids: `UnknownIdError` naming them, or dropped with
    `unknown="drop"` (listed in `Recommendation.dropped`), never scored;
  * an empty history (or one whose ids were all dropped): the training
    popularity list, flagged `source="popularity"`;
  * a history longer than `max_len`: the encoder reads the newest `max_len`
    events, as in training (`Recommendation.truncated` counts the others), and
    `exclude_seen` still excludes every item of the history;
  * repeated items: kept as events (people re-watch and re-buy), excluded once.
Batches are padded to a power of two rows and the list length to a power of
two >= k, so a served model compiles a handful of shapes and then only runs.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from recattn_jax.data.pipeline import eval_batches
from recattn_jax.evaluation.topk import pad_table, top_k_items
from recattn_jax.explain import attention_over_history
from recattn_jax.models import (build_encoder, encoder_spec, init_encoder,
                                scoring_table, scoring_users, serving_vectors)
from recattn_jax.serving.lists import (ITEM_CHUNK, Recommendation, Vocabulary,
                                       batch_rows, exclude_width, list_length, rows_per_call)
from recattn_jax.serving.session import Session
from recattn_jax.training.bundle import Bundle, BundleError, read_bundle

def restore_params(template: Any, raw: Any, path: pathlib.Path) -> Any:
  """`raw` (from the bundle) in `template`'s structure, every leaf's shape checked."""
  try:
    params = flax.serialization.from_state_dict(template, raw)
  except (ValueError, KeyError, TypeError) as e:
    raise BundleError(f"{path}/params.msgpack does not fit the model its config builds: {e}") from e
  wrong = [f"{jax.tree_util.keystr(key)}: {np.shape(value)} (model: {like.shape})"
           for (key, value), like in zip(jax.tree_util.tree_leaves_with_path(params),
                                         jax.tree_util.tree_leaves(template))
           if np.shape(value) != like.shape]
  if wrong:
    raise BundleError(f"{path}/params.msgpack does not fit the model its config builds: "
                      + "; ".join(wrong[:5]))
  return jax.tree.map(jnp.asarray, params)


class Recommender:
  """A ranking bundle, loaded; see the module docstring. Build with `Recommender.load`."""

  def __init__(self, bundle: Bundle):
    config = bundle.config
    if config.task != "ranking":
      raise BundleError(f"{bundle.path} holds a task={config.task!r} model; load it with "
                        "`recattn_jax.serving.load` (a click/rating scorer)")
    data = bundle.data
    self.bundle = bundle
    self.config = config
    self.max_len = int(config.data.max_len)
    self.padding = config.data.padding
    self.items = Vocabulary(data.item_ids, "item", first=1)
    self.users = Vocabulary(data.user_ids, "user")
    self.popularity = np.asarray(data.popularity, np.int64)
    self.model = build_encoder(config.model, num_items=len(data.item_ids) - 1,
                               max_len=self.max_len, item_features=data.item_features,
                               user_profiles=data.user_profiles)
    self.spec = encoder_spec(config.model.name)
    template = jax.eval_shape(functools.partial(init_encoder, self.model, max_len=self.max_len),
                              jax.random.key(0))
    self.params = restore_params(template, bundle.params, bundle.path)
    # Padded once to whole chunks of the top-K scan, so no request copies the table.
    table = jax.jit(functools.partial(scoring_table, self.model))(self.params)
    self.table_rows = table.shape[0]
    self.table = pad_table(table, ITEM_CHUNK)
    self.rows_per_call = rows_per_call(self.max_len, jax.default_backend())
    self.reads_timestamps = ("timestamps" in self.spec["batch_keys"]
                             and getattr(self.model, "num_time_buckets", 1) > 0)
    self.reads_users = self.model.user_profiles is not None
    self._popular = np.lexsort((np.arange(len(self.popularity)), -self.popularity))
    self._popular = self._popular[self._popular > 0]

  @classmethod
  def load(cls, path: str | pathlib.Path) -> "Recommender":
    """The verified bundle at `path` (`BundleError` on a damaged or foreign bundle)."""
    return cls(read_bundle(path))

  @property
  def num_items(self) -> int:
    return len(self.items)

  # --------------------------------------------------------------------------
  # Scoring internal ids.

  @functools.cached_property
  def _score(self):
    model, rows = self.model, self.table_rows

    @functools.partial(jax.jit, static_argnames=("k",))
    def score(params, table, batch, *, k):
      users = scoring_users(model, serving_vectors(model, params, batch))
      return top_k_items(users, table, k, batch["exclude"], item_chunk=ITEM_CHUNK, num_rows=rows)
    return score

  def _top_k(self, histories: list[np.ndarray], k: int, exclude_seen: bool,
             timestamps: list[np.ndarray] | None, users: list[int] | None):
    """(ids [n, k], scores [n, k]) of internal histories (each non-empty)."""
    length = list_length(k)
    ids, scores = [], []
    for start in range(0, len(histories), self.rows_per_call):
      part = slice(start, start + self.rows_per_call)
      rows = len(histories[part])
      for batch in eval_batches(histories[part], np.ones(rows, np.int32), max_len=self.max_len,
                                batch_size=batch_rows(rows, self.rows_per_call),
                                padding=self.padding,
                                append_mask_id=self.model.mask_id,
                                timestamps=None if timestamps is None else timestamps[part],
                                users=None if users is None else users[part],
                                min_exclude_width=exclude_width(self.max_len)):
        batch = {key: value for key, value in batch.items() if key not in ("targets", "weight")}
        if not exclude_seen:
          batch["exclude"] = np.zeros_like(batch["exclude"])  # the same compiled shape
        top_scores, top_ids = self._score(self.params, self.table, batch, k=length)
        ids.append(np.asarray(top_ids)[:rows, :k])
        scores.append(np.asarray(top_scores)[:rows, :k])
    return np.concatenate(ids), np.concatenate(scores)

  def popular(self, k: int) -> Recommendation:
    """The `k` items with the most training events (ties: lower index), as a fallback list."""
    order = self._popular[:k]
    return Recommendation(items=list(self.items.ids[order]),
                          scores=self.popularity[order].astype(np.float32), source="popularity")

  def _lists(self, histories, k, exclude_seen, timestamps, users, dropped):
    """Recommendations of internal histories; empty ones get the popularity list."""
    out = [None] * len(histories)
    scored = [i for i, h in enumerate(histories) if len(h)]
    if scored:
      pick = lambda values: None if values is None else [values[i] for i in scored]
      ids, scores = self._top_k(pick(histories), k, exclude_seen, pick(timestamps), pick(users))
      for row, i in enumerate(scored):
        keep = ids[row] > 0  # fewer than k items left
        out[i] = Recommendation(items=list(self.items.ids[ids[row][keep]]),
                                scores=scores[row][keep])
    for i, history in enumerate(histories):
      if out[i] is None:
        out[i] = self.popular(k)
      out[i].dropped = dropped[i]
      out[i].truncated = max(0, len(history) - self.max_len + (self.model.mask_id is not None))
    return out

  def _check_k(self, k: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= self.num_items:
      raise ValueError(f"k must be an integer in [1, {self.num_items}] (the catalogue), got {k!r}")
    return int(k)

  # --------------------------------------------------------------------------
  # The API by original ids.

  def recommend(self, history: Sequence | Sequence[Sequence], k: int = 10, *,
                exclude_seen: bool = True, timestamps: Sequence | None = None,
                unknown: str = "error", user=None) -> Recommendation | list[Recommendation]:
    """The top-`k` items after `history` (original item ids, oldest first), or for each of a batch.

    Args:
      history: item ids, or a list of such lists (then a list is returned).
      k: list length.
      exclude_seen: never recommend an item of the history.
      timestamps: seconds of each event (a list per history for a batch); needed by
        models that read time (HSTU with its time bias).
      unknown: "error" (default) or "drop" for item ids the model does not know.
      user: the original user id (one per history for a batch), for models with a
        user context (`data.user_friends_path`); otherwise unused.
    """
    k = self._check_k(k)
    batched = len(history) > 0 and not isinstance(history[0], (str, bytes, int, np.integer))
    histories = list(history) if batched else [history]
    times = None
    if timestamps is not None:
      times = list(timestamps) if batched else [timestamps]
      if len(times) != len(histories) or any(len(t) != len(h) for t, h in zip(times, histories)):
        raise ValueError("timestamps must give one time per history event")
    elif self.reads_timestamps:
      raise ValueError(f"{self.config.model.name} reads event times (its time bias): pass "
                       "timestamps= with the history")
    users = None
    if self.reads_users:
      if user is None:
        raise ValueError("this model reads a user context (data.user_friends_path): pass user=")
      user_ids = list(user) if batched else [user]
      users = list(self.users.lookup(user_ids)[0])
    internal, kept_times, dropped = [], [], []
    for row, events in enumerate(histories):
      ids, kept, missing = self.items.lookup(list(events), unknown)
      internal.append(ids)
      dropped.append(missing)
      if times is not None:
        kept_times.append(np.asarray(times[row], np.float64)[kept])
    out = self._lists(internal, k, exclude_seen, kept_times if times is not None else None,
                      users, dropped)
    return out if batched else out[0]

  def recommend_users(self, user_ids: Sequence, k: int = 10, *,
                      exclude_seen: bool = True) -> list[Recommendation]:
    """Top-`k` lists for users the run knew, after their whole history in its data.

    A user's history is every event of theirs in the run's data (the test
    target included): what to recommend next, now. Unknown user ids raise
    `UnknownIdError`.
    """
    k = self._check_k(k)
    index, _, _ = self.users.lookup(list(user_ids))
    data = self.bundle.data
    histories = [data.histories[u] for u in index]
    times = None
    if self.reads_timestamps:
      times = [data.history_timestamps[u] for u in index]
    users = list(index) if self.reads_users else None
    return self._lists(histories, k, exclude_seen, times, users, [[] for _ in index])

  def user_history(self, user_id) -> list[str]:
    """A known user's events in the run's data, as original item ids, oldest first."""
    (index,), _, _ = self.users.lookup([user_id])
    return list(self.items.ids[self.bundle.data.histories[index]])

  def explain(self, history: Sequence | None = None, *, user=None, item=None, k: int = 10,
              exclude_seen: bool = True, unknown: str = "error", timestamps: Sequence | None = None):
    """The attention over a history (or a known user's) and the top-`k`, by original ids.

    Returns `explain.Explanation` whose history, items and item are original
    ids; `weights` [layers, heads, n] as in `explain.attention_over_history`.
    """
    k = self._check_k(k)
    times = None
    if history is None:
      if user is None:
        raise ValueError("explain needs a history or a user")
      (index,), _, _ = self.users.lookup([user])
      internal = self.bundle.data.histories[index]
      if self.reads_timestamps:
        times = self.bundle.data.history_timestamps[index]
    else:
      internal, kept, _ = self.items.lookup(list(history), unknown)
      index = self.users.lookup([user])[0][0] if (user is not None and self.reads_users) else None
      if self.reads_timestamps:
        if timestamps is None or len(timestamps) != len(history):
          raise ValueError(f"{self.config.model.name} reads event times: pass timestamps= with "
                           "the history")
        times = np.asarray(timestamps, np.float64)[kept]
    if len(internal) == 0:
      raise ValueError("explain needs at least one known event in the history")
    asked = None if item is None else int(self.items.lookup([item])[0][0])
    explanation = attention_over_history(
        self.model, self.params, internal, asked, top_k=k, exclude_seen=exclude_seen,
        padding=self.padding, max_len=self.max_len,
        user=index if self.reads_users else None, timestamps=times)
    keep = explanation.items > 0
    return dataclasses.replace(
        explanation, history=self.items.ids[explanation.history],
        items=self.items.ids[explanation.items[keep]], scores=explanation.scores[keep],
        item=None if item is None else str(item))

  def session(self, user=None, history: Sequence = (), *, timestamps: Sequence | None = None,
              unknown: str = "error", use_cache: bool = True) -> Session:
    """A live session (`serving.session.Session`) from a known user's history, then `history`."""
    return Session(self, user=user, history=history, timestamps=timestamps, unknown=unknown,
                   use_cache=use_cache)
