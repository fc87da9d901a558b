"""SASRec+ on Amazon Sports and Outdoors (S3Rec's 5-core file in `../shared/data/amazon-sports`).

  python -m recattn_jax.train --config configs/sasrec_amazon_sports.py --workdir runs/sasrec_amazon_sports

Both protocols (seen items excluded and not) are always reported; add
`--config.eval.exclude_seen=False` to early-stop on the all-items one.
"""

from recattn_jax.config import get_amazon_config


def get_config():
  return get_amazon_config("amazon-sports", "Sports_and_Outdoors.txt")
