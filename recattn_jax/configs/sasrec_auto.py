"""SASRec+ on any dataset, with its size-dependent fields measured from the data.

  python -m recattn_jax.train --config sasrec_auto:amazon-sports --workdir runs/sasrec_auto_sports
  python -m recattn_jax.train --config sasrec_auto:/path/to/events.csv --config.data.columns.time=ts

The argument after the colon is a dataset name or a path (as `data.name` / `data.path`).
`config.size_aware_values` sets max_len, dropout, weight decay, batch and epochs from
the training split (docs/tuning.md#size-aware-defaults); on ML-100K they are the
default job's. Fields given on the command line override them; the data fields
that shape the split (format, columns, filters) must be given in the argument's
data, i.e. this file's `get_config` sees only the name or path.
"""

from recattn_jax.config import get_size_aware_config
from recattn_jax.tuning import Choice, default_space


def get_config(data: str = ""):
  if not data:
    raise ValueError("name the data: --config sasrec_auto:<dataset name or path>")
  return get_size_aware_config(data)


def get_search_space(config):
  """`python -m recattn_jax.tune --config sasrec_auto:<data> --budget 60m --workdir studies/<data>`"""
  max_lens = (50, 100, 200) if config.data.max_len > 50 else (50,)
  space = default_space(config, max_lens=max_lens, max_dropout=0.7)
  space["train.schedule"] = Choice(["constant", "cosine"])
  return space
