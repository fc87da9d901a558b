"""Music: SASRec+ on Last.fm HetRec 2011 (`../shared/data/lastfm-hetrec2k`), play counts as feedback.

  python -m recattn_jax.train --config configs/sasrec_lastfm.py --workdir runs/sasrec_lastfm

The data has no times: each user lists their top-50 artists with play counts.
The reader orders every user's artists from least to most played (play count
as the "time"), so leave-one-out asks: given the rest of a user's top
artists, which one is their favourite (test) and second favourite (valid)?
Every artist the user listened to counts as an interaction (implicit
feedback); the play counts decide the order only. The friend graph
(`user_friends.dat`) is not used yet.
"""

from recattn_jax.config import SHARED_DATA, get_default_config


def get_config():
  config = get_default_config()
  config.data.name = "lastfm-hetrec2k"
  config.data.path = str(SHARED_DATA / "lastfm-hetrec2k")
  config.data.format = "lastfm"
  config.data.max_len = 50
  config.model.dropout = 0.5
  config.train.batch_size = 32
  config.train.weight_decay = 0.0
  config.train.num_epochs = 60
  return config
