"""Tiny generated data and configs shared by the end-to-end tests."""

import pathlib

import numpy as np
import pandas as pd

from recattn_jax.config import get_default_config
from recattn_jax.models import ENCODERS


def write_sequence_file(path: pathlib.Path, *, users: int = 96, items: int = 40, seed: int = 0) -> pathlib.Path:
  """`user item item ...` lines whose next item is usually (previous + 1) mod N: learnable, not trivial."""
  rng = np.random.default_rng(seed)
  lines = []
  for user in range(1, users + 1):
    length = int(rng.integers(4, 16))
    seq = [int(rng.integers(1, items + 1))]
    for _ in range(length - 1):
      seq.append(seq[-1] % items + 1 if rng.random() < 0.8 else int(rng.integers(1, items + 1)))
    lines.append(" ".join(map(str, [user, *seq])))
  path.write_text("\n".join(lines) + "\n")
  return path


def tiny_config(data_path: pathlib.Path, *, loss: str | None = None, loss_fields: dict | None = None,
                **train_overrides):
  """A seconds-long ranking run on `data_path`; `loss` / `loss_fields` set `train.loss`."""
  config = get_default_config()
  config.data.name = "tiny"
  config.data.path = str(data_path)
  config.data.format = "sequence"
  config.data.max_len = 12
  for name in ENCODERS.names():  # every encoder, so that tests can switch model.name
    config.model[name].update(embed_dim=16, num_layers=1, dropout_rate=0.1)
    if "ff_dim" in config.model[name]:
      config.model[name].ff_dim = 32
  config.train.batch_size = 16
  config.train.eval_every_epochs = 1
  config.train.num_epochs = 4
  config.train.log_every_steps = 1
  config.train.learning_rate = 5e-3
  config.train.progress_bar = False
  config.eval.batch_size = 32
  config.eval.ks = (1, 10)
  config.train.update(train_overrides)
  if loss:
    config.train.loss.name = loss
  config.train.loss[config.train.loss.name].update(loss_fields or {})
  return config


def preference_frame(users=160, items=48, groups=3, events=24, seed=0):
  """Each user mostly rates items of a hidden preferred group, and rates those high."""
  rng = np.random.default_rng(seed)
  item_group = np.arange(items + 1) % groups
  item_bias = rng.normal(0, 0.4, items + 1)
  rows = []
  for u in range(users):
    g = rng.integers(groups)
    own = np.flatnonzero(item_group == g)
    own = own[own > 0]
    other = np.flatnonzero((item_group != g) & (np.arange(items + 1) > 0))
    for t in range(events):
      liked = rng.random() < 0.6
      item = rng.choice(own if liked else other)
      rating = 2.0 + 2.0 * liked + item_bias[item] + rng.normal(0, 0.4)
      rows.append((str(u), str(item), float(t), float(np.clip(np.round(rating), 1, 5))))
  return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])


def write_ratings_file(path: pathlib.Path, **kwargs) -> pathlib.Path:
  """`preference_frame` as a MovieLens u.data file (user, item, rating, timestamp; tabs)."""
  frame = preference_frame(**kwargs)
  lines = [f"{r.user_id}\t{r.item_id}\t{int(r.rating)}\t{int(r.timestamp)}" for r in frame.itertuples()]
  path.write_text("\n".join(lines) + "\n")
  return path


def make_encoder(name: str, *, num_items: int, max_len: int, item_features=None,
                 user_profiles=None, **fields):
  """Encoder `name` built the way a config builds it (`config.model.<name>` with `fields`)."""
  from recattn_jax.models import build_encoder  # pylint: disable=g-import-not-at-top
  config = get_default_config().model
  config.name = name
  config[name].update(fields)
  return build_encoder(config, num_items=num_items, max_len=max_len, item_features=item_features,
                       user_profiles=user_profiles)


def score_items(model, params, hidden):
  """float32 logits of every item (the padding column masked), as training and evaluation score."""
  from recattn_jax.models import catalogue_logits, scoring_inputs  # pylint: disable=g-import-not-at-top
  return catalogue_logits(*scoring_inputs(model, params, hidden))
