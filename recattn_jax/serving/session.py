"""A user's live session: events arrive one at a time and each updates the recommendations.

For encoders registered with `kv_cache=True` (SASRec, HSTU) trained with
positions counted from the oldest event (`model.<name>.positions="start"`),
`append` runs the new event's query against the cached keys and values of
every layer: O(L) work instead of re-encoding the history in O(L^2). The
result equals the full recomputation on the same events (tests check it
after any number of appends).

The window: the encoder reads the newest `max_len` events, as in training.
While the session holds fewer, `append` extends the cache; once it is full,
the window slides (the oldest event leaves it) and, because every remaining
event's position then changes, the newest `max_len` events are encoded again
(one full pass, as without a cache). `exclude_seen` always covers every
event of the session, also those that left the window.

Other encoders recompute the whole window on each `recommend` (exact, and
cheap for short windows): BERT4Rec (bidirectional, so an appended event
changes every earlier state), GRU4Rec, models trained with positions="end"
(the newest event is position 0, so appending moves every position) and
HSTU with attention_norm="sequence". `Session.uses_cache` tells which path a
session takes.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

from recattn_jax.evaluation.topk import top_k_items
from recattn_jax.models import scoring_users
from recattn_jax.serving.lists import ITEM_CHUNK, Recommendation, exclude_width, list_length


def cacheable(model, spec: dict) -> bool:
  """Whether `model` has a key/value cache that stays valid when an event is appended."""
  return bool(spec.get("kv_cache")) and model.cache_problem() is None


@functools.partial(jax.jit, static_argnames=("model",))
def _prefill(model, params, items, users, timestamps):
  return model.apply(params, items, users=users, timestamps=timestamps, method="prefill")


@functools.partial(jax.jit, static_argnames=("model",), donate_argnums=(2,))
def _extend(model, params, cache, items, users, timestamps):
  return model.apply(params, cache, items, users=users, timestamps=timestamps, method="extend")


@functools.partial(jax.jit, static_argnames=("model", "k", "num_rows"))
def _top_k(model, table, vector, exclude, *, k, num_rows):
  return top_k_items(scoring_users(model, vector), table, k, exclude, item_chunk=ITEM_CHUNK,
                     num_rows=num_rows)


@functools.partial(jax.jit, static_argnames=("model", "k", "num_rows"), donate_argnums=(2,))
def _extend_top_k(model, params, cache, items, users, timestamps, table, exclude, *, k, num_rows):
  """`_extend` then `_top_k` in one dispatch: the usual append-then-recommend step."""
  vector, cache = model.apply(params, cache, items, users=users, timestamps=timestamps,
                              method="extend")
  return (vector, cache) + _top_k(model, table, vector, exclude, k=k, num_rows=num_rows)


def _exclude_row(items: list[int], max_len: int) -> np.ndarray:
  row = np.zeros((1, exclude_width(max(len(items), max_len))), np.int32)
  row[0, :len(items)] = items
  return row


class Session:
  """Events of one user, oldest first, with the encoder state kept between events.

  Build with `Recommender.session(user=..., history=..., timestamps=...)`;
  `use_cache=False` recomputes the window on each `recommend` even when a
  cache would serve (the reference the cached path is tested and timed against).
  """

  def __init__(self, rec, *, user=None, history: Sequence = (),
               timestamps: Sequence | None = None, unknown: str = "error", use_cache: bool = True):
    self.rec = rec
    self.user_index = None
    if user is not None:
      (self.user_index,), _, _ = rec.users.lookup([user])
      items = list(rec.bundle.data.histories[self.user_index])
      times = (list(rec.bundle.data.history_timestamps[self.user_index])
               if rec.reads_timestamps else None)
      if len(history):
        extra, kept, _ = rec.items.lookup(list(history), unknown)
        items += list(extra)
        if times is not None:
          times += list(np.asarray(self._need_times(timestamps, len(history)), np.float64)[kept])
    else:
      ids, kept, _ = rec.items.lookup(list(history), unknown)
      items = list(ids)
      times = None
      if rec.reads_timestamps:
        times = list(np.asarray(self._need_times(timestamps, len(history)), np.float64)[kept])
    if rec.reads_users and self.user_index is None:
      raise ValueError("this model reads a user context (data.user_friends_path): start the "
                       "session with user=")
    self.items: list[int] = [int(i) for i in items]
    self.times: list[float] | None = times
    self.uses_cache = use_cache and cacheable(rec.model, rec.spec)
    self._cache = None
    self._vector = None
    # Events appended but not yet in the cache: the newest of them is added together
    # with the next top-K, so an append followed by a recommend is one dispatch.
    self._unencoded = 0
    self._origin = times[0] if times else None  # times go to the model relative to it
    if self.uses_cache and self.items:
      self._prefill()

  def _need_times(self, timestamps, count: int):
    if timestamps is None or len(timestamps) != count:
      raise ValueError(f"{self.rec.config.model.name} reads event times: give one timestamp per "
                       "history event")
    return timestamps

  @property
  def history(self) -> list[str]:
    """The session's events as original item ids, oldest first."""
    return list(self.rec.items.ids[self.items])

  def _window(self) -> slice:
    return slice(max(0, len(self.items) - self.rec.max_len), len(self.items))

  def _users(self, shape):
    if not self.rec.reads_users:
      return None
    return np.full(shape, self.user_index + 1, np.int32)

  def _times(self, values) -> np.ndarray | None:
    if self.times is None:
      return None
    return (np.asarray(values, np.float64) - self._origin).astype(np.float32)

  def _prefill(self):
    window = self._window()
    items = np.zeros((1, self.rec.max_len), np.int32)
    newest = self.items[window]
    items[0, :len(newest)] = newest
    times = None
    if self.times is not None:
      times = np.zeros((1, self.rec.max_len), np.float64) + self.times[window][-1]
      times[0, :len(newest)] = self.times[window]
      times = self._times(times)
    self._vector, self._cache = _prefill(self.rec.model, self.rec.params, items,
                                         self._users(items.shape), times)

  def append(self, item, timestamp: float | None = None) -> "Session":
    """Adds one event (an original item id; a time in seconds for models that read time)."""
    (index,), _, _ = self.rec.items.lookup([item])
    if self.times is not None:
      if timestamp is None:
        raise ValueError(f"{self.rec.config.model.name} reads event times: append(item, timestamp=)")
      self.times.append(float(timestamp))
      if self._origin is None:
        self._origin = self.times[0]
    self.items.append(int(index))
    if not self.uses_cache:
      return self
    if self._cache is None or len(self.items) > self.rec.max_len:
      self._unencoded = 0
      self._prefill()  # the first event, or the window slid: every position moved
    else:
      self._unencoded += 1
    return self

  def _step_inputs(self, back: int):
    """(item [1], users, timestamps) of the event `back` places from the newest (1 = newest)."""
    item = np.asarray([self.items[-back]], np.int32)
    times = None if self.times is None else self._times([self.times[-back]])
    return item, self._users((1,)), times

  def _catch_up(self, leave: int = 0):
    """Extends the cache by the appended events it lacks but the newest `leave`."""
    while self._unencoded > leave:
      self._vector, self._cache = _extend(self.rec.model, self.rec.params, self._cache,
                                          *self._step_inputs(self._unencoded))
      self._unencoded -= 1

  def extend(self, items: Sequence, timestamps: Sequence | None = None) -> "Session":
    for i, item in enumerate(items):
      self.append(item, None if timestamps is None else timestamps[i])
    return self

  def user_vector(self) -> np.ndarray:
    """The encoder's output at the newest event ([D]), from the cache."""
    if not self.uses_cache:
      raise ValueError("this session recomputes its window on each recommend (uses_cache=False)")
    self._catch_up()
    return np.asarray(self._vector)[0]

  def recommend(self, k: int = 10, *, exclude_seen: bool = True):
    """The top-`k` after the session's events (`Recommendation`; popularity when empty)."""
    rec = self.rec
    k = rec._check_k(k)  # pylint: disable=protected-access
    if not self.items:
      return rec.popular(k)
    if not self.uses_cache:
      histories = [np.asarray(self.items, np.int32)]
      times = None if self.times is None else [np.asarray(self.times)]
      users = None if not rec.reads_users else [self.user_index]
      return rec._lists(histories, k, exclude_seen, times, users, [[]])[0]  # pylint: disable=protected-access
    exclude = _exclude_row(self.items if exclude_seen else [], rec.max_len)
    self._catch_up(leave=1)
    if self._unencoded:
      self._vector, self._cache, scores, ids = _extend_top_k(
          rec.model, rec.params, self._cache, *self._step_inputs(1), rec.table, exclude,
          k=list_length(k), num_rows=rec.table_rows)
      self._unencoded = 0
    else:
      scores, ids = _top_k(rec.model, rec.table, self._vector, exclude, k=list_length(k),
                           num_rows=rec.table_rows)
    ids, scores = np.asarray(ids)[0, :k], np.asarray(scores)[0, :k]
    keep = ids > 0
    return Recommendation(items=list(rec.items.ids[ids[keep]]), scores=scores[keep],
                          truncated=max(0, len(self.items) - rec.max_len))
