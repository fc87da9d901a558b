"""Which past events a recommendation attended to: attention weights over a user's history.

`attention_over_history` runs the encoder once with attention capture on (see
`models.transformer.capture_attention_weights`) and returns, for the position
that produces the recommendation (the newest event for SASRec and other causal
encoders), each layer's and head's attention over the history, padding
removed, together with the top-K recommendations and their scores.
Attention is a view of what the model mixed, not a causal attribution: later
layers mix already-mixed states, and the feed-forward and residual paths carry
information that attention weights do not show.

`plot_attention_heatmap` draws it; `explain_user` does the whole thing for a
user of a finished training run (its workdir).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from recattn_jax.data.loading import load_split, load_split_features, load_user_profiles
from recattn_jax.data.readers import item_titles
from recattn_jax.data.cloze import append_mask
from recattn_jax.data.pipeline import eval_batches, pad_to
from recattn_jax.evaluation.ranking import target_ranks
from recattn_jax.evaluation.topk import check_item_ids, top_k_items
from recattn_jax.models import build_encoder, init_encoder, last_hidden, scoring_inputs
from recattn_jax.models.transformer import capture_attention_weights
from recattn_jax.training.checkpoint import Checkpoints


@dataclasses.dataclass
class Explanation:
  """One user's explanation."""

  history: np.ndarray  # [n] item ids the encoder saw (newest max_len events), oldest first
  weights: np.ndarray  # [layers, heads, n] attention of the query position over `history`
  items: np.ndarray  # [k] recommended item ids, best first (0 = none left)
  scores: np.ndarray  # [k] their scores
  item: int | None = None  # the item asked about, if any
  item_score: float | None = None
  item_rank: int | None = None  # 0-based among the catalogue (ties pessimistic)


def _is_batch(history) -> bool:
  if isinstance(history, np.ndarray):
    return history.ndim == 2
  return len(history) > 0 and not np.isscalar(history[0]) and np.ndim(history[0]) == 1


def attention_weights_by_layer(intermediates: dict) -> list[jax.Array]:
  """Every sown "attention_weights" ([B, H, Lq, Lk]) in call order, i.e. layer order."""
  found = []

  def walk(tree):
    for name, value in tree.items():
      if name == "attention_weights":
        found.extend(value)
      elif isinstance(value, dict) or hasattr(value, "items"):
        walk(value)

  walk(intermediates)
  return found


@functools.partial(jax.jit, static_argnames=("model", "top_k"))
def _explain(model, params, inputs, exclude, asked, users, timestamps, *, top_k):
  """Weights [B, layers, H, L] at each row's newest event, top-K and the asked items' scores and ranks."""
  with capture_attention_weights():
    hidden, state = model.apply(params, inputs, deterministic=True, users=users,
                                timestamps=timestamps,
                                mutable=["intermediates"])
  layers = attention_weights_by_layer(state["intermediates"])
  if not layers:
    raise ValueError(f"{type(model).__name__} sowed no attention weights: none of its modules "
                     "sets CAPTURES_ATTENTION (see models.transformer.capture_attention_weights)")
  weights = jnp.stack(layers, axis=1)  # [B, layers, H, Lq, Lk]
  query = jnp.max(jnp.where(inputs > 0, jnp.arange(inputs.shape[1]), -1), axis=1)
  weights = jnp.take_along_axis(weights, query[:, None, None, None, None], axis=3)[:, :, :, 0]
  users, table = scoring_inputs(model, params, last_hidden(hidden, inputs))
  scores, ids = top_k_items(users, table, top_k, exclude)
  asked_scores = jnp.einsum("bd,bd->b", users.astype(jnp.float32), table[asked].astype(jnp.float32))
  return weights, scores, ids, asked_scores, target_ranks(users, table, asked, exclude)


def attention_over_history(model, params, history, item=None, *, top_k: int = 10,
                           exclude_seen: bool = True, padding: str = "left",
                           max_len: int | None = None, user=None, timestamps=None):
  """Attention over the history at the recommending position, with the top-K list.

  Args:
    model: a sequence encoder (SASRec, BERT4Rec, HSTU) whose
      `apply(params, items [B, L], deterministic=True)` gives hidden states
      [B, L, D] and whose `item_embeddings` method gives the item table.
      HSTU's weights are its pointwise SiLU(scores) / N: signed, not summing to 1.
    params: its variables.
    history: one user's item ids (oldest first), or a list of them.
    item: optional item id (or one per user) whose score and rank to report.
    top_k: number of recommendations.
    exclude_seen: never recommend (nor rank `item` against) the user's
      history; `item` itself stays rankable, as in evaluation.
    padding: "left" or "right", as the model was trained.
    max_len: input length (default `model.max_len`); only the newest events fit.
    user: the user's index (or one per history), needed by models with a user
      context (`data.user_friends_path`).
    timestamps: seconds of each history event (one array per history for a
      list), for models that read time (HSTU's time bias), as in evaluation.
  Returns:
    An `Explanation`, or a list of them for a list of histories.
  """
  batched = _is_batch(history)
  histories = [np.asarray(h, np.int32) for h in (history if batched else [history])]
  if any(len(h) == 0 for h in histories):
    raise ValueError("every history needs at least one event")
  items_asked = (list(item) if batched else [item]) if item is not None else [None] * len(histories)
  length = max_len or model.max_len
  mask_id = model.mask_id  # cloze encoders recommend from a mask token
  inputs = jnp.asarray(np.stack([
      pad_to(h if mask_id is None else append_mask(h, length, mask_id), length, padding)
      for h in histories]))

  width = max(len(h) for h in histories)
  exclude = np.zeros((len(histories), width), np.int32)
  for row, h in enumerate(histories):
    exclude[row, :len(h)] = h
  asked = np.asarray([1 if i is None else int(i) for i in items_asked], np.int32)
  check_item_ids(histories + [asked], model.num_items)
  exclude = jnp.asarray(exclude) if exclude_seen else None
  users = None
  if user is not None:
    per_row = np.asarray(list(user) if batched else [user], np.int32)
    users = jnp.asarray(np.repeat(per_row[:, None] + 1, length, axis=1))
  times = None
  if timestamps is not None:
    per_history = list(timestamps) if batched else [timestamps]
    times = jnp.asarray(next(eval_batches(
        histories, np.ones(len(histories), np.int32), max_len=length, batch_size=len(histories),
        padding=padding, append_mask_id=mask_id, timestamps=per_history))["timestamps"])
  outputs = _explain(model, params, inputs, exclude, jnp.asarray(asked), users, times, top_k=top_k)
  weights, scores, ids, asked_scores, asked_ranks = (np.asarray(a) for a in outputs)
  valid = (np.asarray(inputs) > 0) & (np.asarray(inputs) != mask_id)
  out = []
  for row in range(len(histories)):
    ask = items_asked[row]
    out.append(Explanation(
        history=np.asarray(inputs)[row][valid[row]], weights=weights[row][..., valid[row]],
        items=np.asarray(ids[row]), scores=np.asarray(scores[row]),
        item=None if ask is None else int(ask),
        item_score=None if ask is None else float(asked_scores[row]),
        item_rank=None if ask is None else int(asked_ranks[row])))
  return out if batched else out[0]


def plot_attention_heatmap(weights: np.ndarray, history_titles: Sequence[str], *,
                           title: str | None = None, ax=None, max_title_chars: int = 32):
  """Heatmap of weights [layers, heads, n]: one row per (layer, head), items on the x axis.

  Draws on `ax` when given, else on a new Figure (no pyplot state, so it works
  under any backend, Agg included). Returns the Figure.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  weights = np.asarray(weights)
  if weights.ndim != 3 or weights.shape[-1] != len(history_titles):
    raise ValueError(f"weights must be [layers, heads, {len(history_titles)}], got {weights.shape}")
  num_layers, num_heads, n = weights.shape
  if ax is None:
    fig = Figure(figsize=(min(2.5 + 0.28 * n, 40), 2.2 + 0.35 * num_layers * num_heads
                          + 0.06 * max_title_chars))
    ax = fig.add_subplot()
  else:
    fig = ax.figure
  image = ax.imshow(weights.reshape(num_layers * num_heads, n), aspect="auto", cmap="viridis",
                    vmin=0.0, interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="attention weight")
  ax.set_yticks(range(num_layers * num_heads),
                [f"layer {l + 1} head {h + 1}" for l in range(num_layers) for h in range(num_heads)])
  labels = [t if len(t) <= max_title_chars else t[:max_title_chars - 1] + "\u2026"
            for t in map(str, history_titles)]
  ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
  ax.set_xlabel("history, oldest \u2192 newest")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------
# A user of a finished run.


def _load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text(encoding="utf-8")))


def load_run(workdir: str | pathlib.Path):
  """(config, split, model, best params) of a finished training run in `workdir`."""
  workdir = pathlib.Path(workdir)
  config = _load_config(workdir)
  data = load_split(config.data)
  model = build_encoder(config.model, num_items=data.num_items, max_len=config.data.max_len,
                      item_features=load_split_features(config.data, data),
                      user_profiles=load_user_profiles(config.data, data))
  params_like = jax.jit(functools.partial(init_encoder, model, max_len=config.data.max_len))(
      jax.random.key(0))
  results = workdir / "results.json"
  best_step = json.loads(results.read_text(encoding="utf-8"))["best_step"] if results.exists() else None
  checkpoints = Checkpoints(workdir, read_only=True)
  try:
    params = checkpoints.restore_best(params_like, best_step)
  finally:
    checkpoints.close()
  return config, data, model, params


def explain_user(workdir: str | pathlib.Path, user_index: int, *, split: str = "test",
                 top_k: int = 5) -> tuple[Explanation, np.ndarray, dict[str, Any]]:
  """Explains the recommendation for one evaluation user of a finished run.

  Loads `workdir`'s config and best checkpoint, rebuilds the data split and
  explains the history of user `user_index` (the internal user index) in the
  "valid" or "test" set, asking about the actual target item.
  Returns (explanation, titles [N + 1] indexed by item id, info: the original
  user id, the target item id, the split name and the run's config).
  """
  config, data, model, params = load_run(workdir)
  eval_set = getattr(data, split)
  rows = np.flatnonzero(eval_set.users == user_index)
  if rows.size == 0:
    raise ValueError(f"user {user_index} has no {split} example")
  row = int(rows[0])
  explanation = attention_over_history(
      model, params, eval_set.histories[row], int(eval_set.targets[row]), top_k=top_k,
      exclude_seen=config.eval.exclude_seen, padding=config.data.padding,
      max_len=config.data.max_len, user=user_index if model.user_profiles is not None else None)
  info = {"user_id": str(data.user_ids[user_index]), "target": int(eval_set.targets[row]),
          "split": split, "config": config}
  return explanation, item_titles(data.item_ids, data.stats["source"]), info
