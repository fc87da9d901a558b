"""Tiny generated data and configs shared by the end-to-end tests."""

import pathlib

import numpy as np

from recattn_jax.config import get_default_config


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


def tiny_config(data_path: pathlib.Path, **train_overrides):
  config = get_default_config()
  config.data.name = "tiny"
  config.data.path = str(data_path)
  config.data.format = "sequence"
  config.data.max_len = 12
  config.model.embed_dim = 16
  config.model.num_layers = 1
  config.model.ff_dim = 32
  config.model.dropout = 0.1
  config.train.batch_size = 16
  config.train.eval_every_epochs = 1
  config.train.num_epochs = 4
  config.train.log_every_steps = 1
  config.train.learning_rate = 5e-3
  config.train.progress_bar = False
  config.eval.batch_size = 32
  config.eval.ks = (1, 10)
  config.train.update(train_overrides)
  return config
