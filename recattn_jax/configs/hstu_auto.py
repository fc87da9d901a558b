"""HSTU on any dataset, with the size-dependent fields measured from the data (as `sasrec_auto`).

  python -m recattn_jax.train --config hstu_auto:amazon-sports --workdir runs/hstu_auto_sports
  python -m recattn_jax.tune --config hstu_auto:amazon-toys --budget 4h --workdir studies/hstu_auto_toys

The argument after the colon is a dataset name or a path (as `data.name` / `data.path`);
`sasrec_auto`'s docstring says what is sized and what the command line may override.
Data whose reader makes up its timestamps (a sequence file's are positions) gets no
time-bias buckets: the relative-position bias already says what positions would.
"""

from recattn_jax.config import get_size_aware_config
from recattn_jax.configs.sasrec_auto import get_search_space  # noqa: F401  (it follows model.name)
from recattn_jax.data.loading import has_clock


def get_config(data: str = ""):
  if not data:
    raise ValueError("name the data: --config hstu_auto:<dataset name or path>")
  config = get_size_aware_config(data)
  config.model.name = "hstu"
  if not has_clock(config.data):
    config.model.hstu.num_time_buckets = 0
  return config

