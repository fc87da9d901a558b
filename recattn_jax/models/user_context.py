"""A per-user context vector added to every event embedding of that user's sequence.

The context of user u is a weighted bag of items (`data.social.UserProfiles`),
e.g. what u's friends listen to: the weighted mean of those items'
vectors from the encoder's own item encoder, through a learned projection.
The projection starts at zero, so a model with a context starts out as the
same model without one and learns how much the context should count.

Encoders take `users` [B, L] (user index + 1, 0 = padding, as the data
pipeline's "users" key); packed rows hold several users, so the context is
looked up per position. The profile arrays are compiled into the program as
constants: right for thousands of users (Last.fm: 1,892 x 50); a catalogue of
millions of users would need them passed as an input instead.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.data.social import UserProfiles


class UserContext(nn.Module):
  """[B, L] user numbers -> [B, L, D] context vectors (zero for padding and users without items)."""

  profiles: UserProfiles
  embed_dim: int

  @nn.compact
  def __call__(self, users: jax.Array, item_vectors) -> jax.Array:
    """`item_vectors` maps item ids [..., F] to [..., F, D] (the encoder's item encoder)."""
    items = jnp.asarray(self.profiles.items)[users]
    weights = jnp.asarray(self.profiles.weights, jnp.float32)[users]
    bag = jnp.einsum("...f,...fd->...d", weights, item_vectors(items).astype(jnp.float32))
    # No bias: a user without context items gets exactly zero, not a learned offset.
    return nn.Dense(self.embed_dim, use_bias=False, kernel_init=nn.initializers.zeros,
                    name="project")(bag)


def check_users(profiles: UserProfiles | None, users: jax.Array | None) -> None:
  """An encoder built with profiles needs `users`, and one without must not get them."""
  if profiles is not None and users is None:
    raise ValueError("this encoder has a user context (data.user_friends_path); pass `users` "
                     "[B, L] (user index + 1) with the items")
  if profiles is None and users is not None:
    raise ValueError("`users` given to an encoder without a user context; set "
                     "data.user_friends_path to build one")
