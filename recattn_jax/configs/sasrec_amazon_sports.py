"""SASRec+ on Amazon Sports and Outdoors (S3Rec's 5-core file in dataset `amazon-sports`).

  python -m recattn_jax.train --config sasrec_amazon_sports --workdir runs/sasrec_amazon_sports

Both protocols (seen items excluded and not) are always reported; add
`--config.eval.exclude_seen=False` to early-stop on the all-items one.
"""

from recattn_jax.config import get_amazon_config
from recattn_jax.tuning import Choice, default_space


def get_config():
  return get_amazon_config("amazon-sports")


def get_search_space(config):
  """`python -m recattn_jax.tune --config sasrec_amazon_sports --budget 4h --workdir studies/sasrec_amazon_sports`

  The histories are cut to 50 events by the preprocessing, so max_len stays.
  """
  space = default_space(config, max_lens=(50,), max_dropout=0.7)
  space["train.schedule"] = Choice(["constant", "cosine"])
  return space
