"""The TPU `pallas` path (splash attention) against `reference`, on CPU.

`splash_attention` is what `implementation="pallas"` runs on a TPU; here it
runs the same kernel code in Pallas interpret mode (`interpret=True`: the
grid is executed as a JAX loop; `pltpu.InterpretParams()`: TPU interpret mode,
which also simulates VMEM / DMAs, fills uninitialised memory with NaN and
raises on out-of-bounds reads). Outputs and d(sum(out * ct))/d(q, k, v) are
compared with `reference` in one compiled program per case.

Tolerances: float32 as in tests/test_attention.py (outputs 2e-5, gradients
1e-4, absolute and relative); bf16 inputs 2e-2 / 5e-2 (the kernel rounds its
probabilities and dS to bf16 before the matmuls, the reference does not).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.attention import IMPLEMENTATIONS, BlockSparse, MaskSpec, dense_mask
from recattn_jax.attention import pallas as pallas_mod
from recattn_jax.attention.pallas import pallas_attention, splash_attention

TOL = {
    jnp.float32: dict(out=(2e-5, 2e-5), grad=(1e-4, 1e-4)),
    jnp.bfloat16: dict(out=(2e-2, 2e-2), grad=(5e-2, 5e-2)),
}
SCALE = 0.3
# Compiles dominate on CPU: compile with XLA's backend optimisation turned down.
_FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0,
                     "xla_llvm_disable_expensive_passes": True}


def _inputs(dtype, batch, q_len, kv_len, heads=2, dim=32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (batch, q_len, heads, dim)).astype(dtype)
  k = jax.random.normal(keys[1], (batch, kv_len, heads, dim)).astype(dtype)
  v = jax.random.normal(keys[2], (batch, kv_len, heads, dim)).astype(dtype)
  ct = jax.random.normal(keys[3], (batch, q_len, heads, dim))
  return q, k, v, ct


def _packed_segments(length, cuts, pad):
  """[1]*cuts[0] [2]*(cuts[1]-cuts[0]) ... then `pad` positions of id 0 (padding)."""
  pos = np.arange(length)
  seg = 1 + np.searchsorted(np.asarray(cuts), pos, side="right")
  return np.where(pos < length - pad, seg, 0).astype(np.int32)


def _mask(kind, batch, q_len, kv_len):
  kv_pos = jnp.arange(kv_len)[None, :]
  if kind == "plain":
    return None
  if kind == "causal":
    return MaskSpec(causal=True)
  if kind == "causal_packed":  # several users per row; row 1 packed differently
    seg = jnp.asarray(np.stack([_packed_segments(q_len, [37, 90, 150], pad=13),
                                _packed_segments(q_len, [5, 128, 129], pad=0)])[:batch])
    return MaskSpec(causal=True, q_segment_ids=seg, kv_segment_ids=seg)
  if kind == "kv_padding":  # right padding, random holes; row 1 has no valid key
    lengths = jnp.array([kv_len * 2 // 3] + [0] * (batch - 1))
    holes = jax.random.bernoulli(jax.random.key(5), 0.9, (batch, kv_len))
    return MaskSpec(kv_valid=(kv_pos < lengths[:, None]) & holes)
  if kind == "causal_window":
    return MaskSpec(causal=True, window=(40, 3))  # right > 0: causal still wins
  if kind == "window_padded":  # two-sided window and key padding, Lq != Lk
    valid = jax.random.bernoulli(jax.random.key(6), 0.8, (batch, kv_len))
    return MaskSpec(window=(17, 9), kv_valid=valid)
  if kind == "cross_packed":  # Lq != Lk, separate q / kv segment ids
    q_seg = jnp.asarray(np.stack([_packed_segments(q_len, [30, 60], pad=7)] * batch))
    kv_seg = jnp.asarray(np.stack([_packed_segments(kv_len, [70, 120], pad=20)] * batch))
    return MaskSpec(q_segment_ids=q_seg, kv_segment_ids=kv_seg)
  raise ValueError(kind)


def _compare(kind, dtype=jnp.float32, *, batch=2, q_len=200, kv_len=None, interpret=True):
  kv_len = q_len if kv_len is None else kv_len
  q, k, v, ct = _inputs(dtype, batch, q_len, kv_len)
  mask = _mask(kind, batch, q_len, kv_len)
  splash = lambda q, k, v, *, mask, bias, scale: splash_attention(
      q, k, v, mask=mask, bias=bias, scale=scale, interpret=interpret)

  def both(q, k, v, mask):
    results = []
    for fn in (splash, IMPLEMENTATIONS["reference"]):
      def loss(q, k, v):
        out = fn(q, k, v, mask=mask, bias=None, scale=SCALE)
        return jnp.sum(out.astype(jnp.float32) * ct), out
      (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
      results.append((out, grads))
    return results

  with jax.default_matmul_precision("highest"):
    lowered = jax.jit(both).lower(q, k, v, mask)
  options = _FAST_CPU_COMPILE if jax.default_backend() == "cpu" else None
  (out, grads), (ref_out, ref_grads) = lowered.compile(compiler_options=options)(q, k, v, mask)
  tol = TOL[dtype]
  _close(out, ref_out, tol["out"], f"{kind} output")
  for name, g, rg in zip("qkv", grads, ref_grads):
    _close(g, rg, tol["grad"], f"{kind} d{name}")
  # Rows that see no key: exactly zero, and they pass nothing back.
  visible = np.asarray(jnp.any(dense_mask(mask, batch, q_len, kv_len), -1))[:, 0]
  assert np.all(np.asarray(out)[~visible] == 0)
  assert np.all(np.asarray(grads[0])[~visible] == 0)
  return out, mask


def _close(actual, expected, tol, what):
  actual = np.asarray(jnp.asarray(actual, jnp.float32))
  expected = np.asarray(jnp.asarray(expected, jnp.float32))
  assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
  np.testing.assert_allclose(actual, expected, atol=tol[0], rtol=tol[1], err_msg=what)


def test_plain():  # 128 = one block: no padding, the kernel without segment ids
  _compare("plain", q_len=128)


def test_causal():  # 256: two blocks, the block above the diagonal is skipped
  _compare("causal", q_len=256)


def test_causal_packed_segments():
  out, _ = _compare("causal_packed")
  assert np.all(np.asarray(out[0, -13:]) == 0)  # segment id 0 = padding sees nothing


def test_kv_padding():
  out, _ = _compare("kv_padding")
  assert np.all(np.asarray(out[1]) == 0)  # batch row 1 has no valid key


def test_causal_local_window():
  _compare("causal_window")


def test_bf16_causal_packed():
  _compare("causal_packed", jnp.bfloat16)


def test_lengths_not_block_multiples():
  # Lq = 100 and Lk = 230 are padded to 128 and 256; two-sided window + key padding.
  _compare("window_padded", q_len=100, kv_len=230)


def test_cross_attention_segments():
  _compare("cross_packed", batch=1, q_len=90, kv_len=150)


def test_tpu_interpret_mode():
  # TPU interpret mode: NaN-filled scratch memory, bounds-checked reads.
  from jax.experimental.pallas import tpu as pltpu
  _compare("causal_packed", batch=1, q_len=140, interpret=pltpu.InterpretParams())


def test_rejects_bias_and_block_sparse():
  x = jnp.zeros((1, 128, 1, 8), jnp.float32)
  with pytest.raises(NotImplementedError, match="bias"):
    splash_attention(x, x, x, mask=None, bias=jnp.zeros((1, 1, 128, 128)), scale=1.0,
                     interpret=True)
  with pytest.raises(NotImplementedError, match="block-sparse"):
    splash_attention(x, x, x, mask=MaskSpec(block_sparse=BlockSparse(block_size=16)),
                     bias=None, scale=1.0, interpret=True)


def test_pallas_on_tpu_dispatches_to_splash(monkeypatch):
  calls = []

  def spy(q, k, v, *, mask, bias, scale, interpret):
    calls.append(interpret)
    return q

  x = jnp.zeros((1, 8, 1, 8), jnp.float32)
  monkeypatch.setattr(pallas_mod, "splash_attention", spy)
  monkeypatch.setattr(pallas_mod.jax, "default_backend", lambda: "tpu")
  pallas_attention(x, x, x, mask=MaskSpec(causal=True), bias=None, scale=1.0)
  assert calls == [False]
