"""SASRec+ on Amazon Sports and Outdoors (S3Rec's 5-core file in dataset `amazon-sports`).

  python -m recattn_jax.train --config sasrec_amazon_sports --workdir runs/sasrec_amazon_sports

Both protocols (seen items excluded and not) are always reported; add
`--config.eval.exclude_seen=False` to early-stop on the all-items one.
"""

from recattn_jax.config import get_amazon_config


def get_config():
  return get_amazon_config("amazon-sports")
