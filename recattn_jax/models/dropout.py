"""Dropout whose random bits cost a quarter or less of `flax.linen.Dropout`'s.

`nn.Dropout` draws one 32-bit threefry word per element. On CPU threefry is
slow enough that drawing those bits took ~35% of a SASRec training step
(dropout 0.5, batch 256 x 50; `benchmarks/compare_recbole.py`). A keep/drop
decision needs far fewer bits: here every 32-bit word yields four 8-bit
uniforms when the rate is a multiple of 1/256 (0.5, 0.25, ...), else two
16-bit ones, so the rate is honoured to within 2^-17. The result is ordinary
inverted dropout: survivors are scaled by 1 / (actual keep probability).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _bits_per_decision(rate: float) -> int:
  return 8 if float(rate * 256).is_integer() else 16


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> tuple[jax.Array, float]:
  """(boolean mask of kept elements, the exact probability that an element is kept)."""
  bits = _bits_per_decision(rate)
  levels = 1 << bits
  threshold = round(rate * levels)
  count = math.prod(shape)
  per_word = 32 // bits
  words = jax.random.bits(key, (-(-count // per_word),), jnp.uint32)
  small = jax.lax.bitcast_convert_type(words, jnp.uint8 if bits == 8 else jnp.uint16)
  uniforms = small.reshape(-1)[:count].reshape(shape)
  return uniforms >= jnp.asarray(threshold, uniforms.dtype), 1.0 - threshold / levels


class Dropout(nn.Module):
  """Drop-in for `nn.Dropout(rate)(x, deterministic=...)`, using the "dropout" RNG stream."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if not 0.0 <= self.rate <= 1.0:
      raise ValueError(f"dropout rate must be in [0, 1], got {self.rate}")
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep, keep_prob = keep_mask(self.make_rng("dropout"), x.shape, self.rate)
    return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))
