"""SASRec+ on Amazon Toys and Games (S3Rec's 5-core preprocessing, `../shared/data/amazon-toys`).

  python -m recattn_jax.train --config configs/sasrec_amazon_toys.py --workdir runs/sasrec_amazon_toys

Add `--config.eval.exclude_seen=False` to early-stop on the all-items protocol
(both protocols are always reported).
"""

import pathlib

from recattn_jax.config import get_default_config

_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-toys" / "Toys_and_Games.txt"


def get_config():
  config = get_default_config()
  config.data.name = "amazon-toys"
  config.data.path = str(_DATA)
  config.data.format = "sequence"
  config.data.max_len = 50
  config.model.dropout = 0.5
  config.train.batch_size = 64
  config.train.num_epochs = 100
  return config
