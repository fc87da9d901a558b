"""Music: SASRec+ on Last.fm HetRec 2011 (dataset `lastfm-hetrec2k`), play counts as feedback.

  python -m recattn_jax.train --config sasrec_lastfm --workdir runs/sasrec_lastfm

The data has no times: each user lists their top-50 artists with play counts.
The reader orders every user's artists from least to most played (play count
as the "time"), so leave-one-out asks: given the rest of a user's top
artists, which one is their favourite (test) and second favourite (valid)?
Every artist the user listened to counts as an interaction (implicit
feedback); the play counts decide the order only. The friend graph is an
option: `configs/sasrec_lastfm_friends.py`.
"""

from recattn_jax.config import get_lastfm_config
from recattn_jax.tuning import Choice, default_space


def get_config():
  return get_lastfm_config()


def get_search_space(config):
  """`python -m recattn_jax.tune --config sasrec_lastfm --budget 4h --workdir studies/sasrec_lastfm`

  The histories are each user's top 50 artists, so max_len stays.
  """
  space = default_space(config, max_lens=(50,), max_dropout=0.7)
  space["train.schedule"] = Choice(["constant", "cosine"])
  return space
