"""Prediction heads: features [..., F] -> outputs [..., out] (out = 1 for a click logit or a rating).

`build_head` makes the one registered (in `HEADS`) under a pointwise model's fields:
  head            "linear" | "mlp" | "residual_mlp"
  head_hidden     hidden widths of "mlp" (e.g. (64, 32)); "residual_mlp"
                  uses its first entry as the block width
  head_blocks     residual blocks of "residual_mlp"
  head_activation a key of ACTIVATIONS
  head_dropout    dropout on hidden activations
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.models.dropout import Dropout
from recattn_jax.models.registry import HEADS

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
}


def _activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"model.*.head_activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
  return ACTIVATIONS[name]


class LinearHead(nn.Module):
  out: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    del deterministic  # no dropout; same signature as the other heads
    return nn.Dense(self.out, dtype=self.dtype, name="output")(x)


class MLPHead(nn.Module):
  """Dense -> activation -> dropout per hidden width, then a linear output."""

  hidden: Sequence[int] = (64, 32)
  out: int = 1
  activation: str = "relu"
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    act = _activation(self.activation)
    for i, width in enumerate(self.hidden):
      x = act(nn.Dense(width, dtype=self.dtype, name=f"hidden_{i}")(x))
      x = Dropout(self.dropout)(x, deterministic=deterministic)
    return nn.Dense(self.out, dtype=self.dtype, name="output")(x)


class ResidualMLPHead(nn.Module):
  """Projection to `width`, then pre-LN blocks x + Dense(drop(act(Dense(LN(x))))), LN, output."""

  width: int = 64
  num_blocks: int = 2
  expansion: int = 2
  out: int = 1
  activation: str = "relu"
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    act = _activation(self.activation)
    x = nn.Dense(self.width, dtype=self.dtype, name="input")(x)
    for i in range(self.num_blocks):
      h = nn.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(x)
      h = act(nn.Dense(self.width * self.expansion, dtype=self.dtype, name=f"up_{i}")(h))
      h = Dropout(self.dropout)(h, deterministic=deterministic)
      x = x + nn.Dense(self.width, dtype=self.dtype, name=f"down_{i}")(h)
    x = nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)
    return nn.Dense(self.out, dtype=self.dtype, name="output")(x)


@HEADS.register("linear")
def _linear(*, out, hidden, activation, dropout, num_blocks, dtype, **kwargs) -> nn.Module:
  del hidden, activation, dropout, num_blocks
  return LinearHead(out=out, dtype=dtype, **kwargs)


@HEADS.register("mlp")
def _mlp(*, out, hidden, activation, dropout, num_blocks, dtype, **kwargs) -> nn.Module:
  del num_blocks
  return MLPHead(hidden=hidden, out=out, activation=activation, dropout=dropout, dtype=dtype,
                 **kwargs)


@HEADS.register("residual_mlp")
def _residual_mlp(*, out, hidden, activation, dropout, num_blocks, dtype, **kwargs) -> nn.Module:
  if not hidden:
    raise ValueError("head='residual_mlp' needs head_hidden=(width,)")
  if num_blocks < 0:
    raise ValueError(f"head_blocks must be >= 0, got {num_blocks}")
  return ResidualMLPHead(width=hidden[0], num_blocks=num_blocks, out=out, activation=activation,
                         dropout=dropout, dtype=dtype, **kwargs)


def build_head(name: str = "mlp", /, *, out: int = 1, hidden: Sequence[int] = (64, 32),
               activation: str = "relu", dropout: float = 0.0, num_blocks: int = 2,
               dtype: jnp.dtype = jnp.float32, **kwargs) -> nn.Module:
  """The head registered as `name`; extra keyword arguments (e.g. the module's `name`) go to it."""
  if out < 1:
    raise ValueError(f"head output size must be >= 1, got {out}")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"head_dropout must lie in [0, 1), got {dropout}")
  hidden = tuple(int(h) for h in hidden)
  if any(h < 1 for h in hidden):
    raise ValueError(f"head_hidden widths must be >= 1, got {hidden}")
  _activation(activation)
  return HEADS.get(name)(out=out, hidden=hidden, activation=activation, dropout=dropout,
                         num_blocks=num_blocks, dtype=dtype, **kwargs)
