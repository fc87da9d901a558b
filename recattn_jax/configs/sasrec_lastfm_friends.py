"""`sasrec_lastfm` plus the friend graph as a user context (Last.fm HetRec 2011).

  python -m recattn_jax.train --config sasrec_lastfm_friends --workdir runs/sasrec_lastfm_friends

Every event of a user also gets a context vector: the artists the user's
friends (`user_friends.dat`) played in training, the 50 shared by most
friends, pooled through the encoder's own artist embeddings and a learned
projection that starts at zero (`recattn_jax/models/user_context.py`). Any
ranking encoder takes it, e.g. `--config.model.name=hstu`.
"""

from recattn_jax.config import get_lastfm_config


def get_config():
  return get_lastfm_config(friends=True)
