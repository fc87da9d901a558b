"""Prediction heads: features [..., F] -> outputs [..., out] (out = 1 for a click logit or a rating).

`build_head` makes one from config fields:
  model.head            "linear" | "mlp" | "residual_mlp"
  model.head_hidden     hidden widths of "mlp" (e.g. (64, 32)); "residual_mlp"
                        uses its first entry as the block width
  model.head_blocks     residual blocks of "residual_mlp"
  model.head_activation a key of ACTIVATIONS
  model.head_dropout    dropout on hidden activations
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from recattn_jax.models.dropout import Dropout

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
}
HEADS = ("linear", "mlp", "residual_mlp")


def _activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"model.head_activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
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


def build_head(name: str = "mlp", /, *, out: int = 1, hidden: Sequence[int] = (64, 32),
               activation: str = "relu", dropout: float = 0.0, num_blocks: int = 2,
               dtype: jnp.dtype = jnp.float32, **kwargs) -> nn.Module:
  """The head named by `model.head`; extra keyword arguments (e.g. the module's `name`) go to it."""
  if out < 1:
    raise ValueError(f"head output size must be >= 1, got {out}")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"model.head_dropout must lie in [0, 1), got {dropout}")
  hidden = tuple(int(h) for h in hidden)
  if any(h < 1 for h in hidden):
    raise ValueError(f"model.head_hidden widths must be >= 1, got {hidden}")
  _activation(activation)
  if name == "linear":
    return LinearHead(out=out, dtype=dtype, **kwargs)
  if name == "mlp":
    return MLPHead(hidden=hidden, out=out, activation=activation, dropout=dropout, dtype=dtype,
                   **kwargs)
  if name == "residual_mlp":
    if not hidden:
      raise ValueError("model.head='residual_mlp' needs model.head_hidden=(width,)")
    if num_blocks < 0:
      raise ValueError(f"model.head_blocks must be >= 0, got {num_blocks}")
    return ResidualMLPHead(width=hidden[0], num_blocks=num_blocks, out=out,
                           activation=activation, dropout=dropout, dtype=dtype, **kwargs)
  raise ValueError(f"model.head must be one of {HEADS}, got {name!r}")
