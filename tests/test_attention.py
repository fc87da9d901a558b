"""Every attention engine against `reference`: outputs and gradients.

Tolerances (max abs error must be <= atol + rtol * |reference|):
  float32  outputs 2e-5 / 2e-5, gradients 1e-4 / 1e-4
  bfloat16 outputs 2e-2 / 2e-2, gradients 5e-2 / 5e-2 (both sides get the
           same bf16 inputs; the engines round probabilities / dS to bf16
           before their matmuls, as flash kernels do)
The Pallas GPU kernel's float32 dots run in TF32, so on a GPU it is held to
the bf16 tolerances. Compiles dominate this file's run time, so on CPU tests
compile with XLA's backend optimisation turned down (`_run`); results stay
within the tolerances above.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recattn_jax.attention import (IMPLEMENTATIONS, POINTWISE_IMPLEMENTATIONS, BlockSparse,
                                   MaskSpec, attend, blockwise_attention, blockwise_stats,
                                   dense_mask, pointwise_normalizer, select_implementation)
from recattn_jax.attention.pallas import pallas_attention
from recattn_jax.attention.schedule import static_block_flags

BACKEND = jax.default_backend()
ON_GPU = BACKEND == "gpu"
TOL = {
    jnp.float32: dict(out=(2e-5, 2e-5), grad=(1e-4, 1e-4)),
    jnp.bfloat16: dict(out=(2e-2, 2e-2), grad=(5e-2, 5e-2)),
}
_FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0,
                     "xla_llvm_disable_expensive_passes": True}


def _run(fn, *args):
  # Full-precision float32 matmuls: GPUs would otherwise use TF32, whose
  # rounding differs between engines by far more than the float32 tolerance.
  with jax.default_matmul_precision("highest"):
    lowered = jax.jit(fn).lower(*args)
  options = _FAST_CPU_COMPILE if BACKEND == "cpu" else None
  return lowered.compile(compiler_options=options)(*args)


@dataclasses.dataclass(frozen=True)
class Case:
  q: jax.Array
  k: jax.Array
  v: jax.Array
  bias: jax.Array | None
  mask: MaskSpec | None
  cotangent: jax.Array


def make_case(kind: str, dtype, *, batch=2, q_len=46, kv_len=46, heads=2, dim=16, seed=0) -> Case:
  """Named mask scenarios; lengths default to a non-multiple of the test blocks."""
  keys = jax.random.split(jax.random.key(seed), 6)
  q = jax.random.normal(keys[0], (batch, q_len, heads, dim)).astype(dtype)
  k = jax.random.normal(keys[1], (batch, kv_len, heads, dim)).astype(dtype)
  v = jax.random.normal(keys[2], (batch, kv_len, heads, dim)).astype(dtype)
  ct = jax.random.normal(keys[3], (batch, q_len, heads, dim))
  bias = mask = None
  kv_pos = jnp.arange(kv_len)[None, :]
  if kind == "none":
    pass
  elif kind == "bias_full":  # relative-position-like bias, one per head
    rel = jnp.arange(q_len)[:, None] - jnp.arange(kv_len)[None, :]
    bias = (0.1 * jnp.tanh(rel / 7.0)[None, None] * jnp.arange(1, heads + 1)[None, :, None, None]
            + 0.3 * jax.random.normal(keys[4], (1, heads, q_len, kv_len)))
  elif kind == "causal_padded":  # batch row 1 has no valid key at all
    lengths = jnp.array([kv_len * 2 // 3] + [0] * (batch - 1))
    mask = MaskSpec(causal=True, kv_valid=kv_pos < lengths[:, None])
  elif kind == "segments":  # packed: [1]*a [2]*b [0 = padding]*rest, plus a time bias
    cut1, cut2 = q_len // 3, q_len - q_len // 5
    seg = jnp.where(jnp.arange(q_len) < cut1, 1, jnp.where(jnp.arange(q_len) < cut2, 2, 0))
    seg = jnp.broadcast_to(seg, (batch, q_len))
    mask = MaskSpec(causal=True, q_segment_ids=seg, kv_segment_ids=seg)
    bias = 0.5 * jax.random.normal(keys[4], (batch, 1, 1, kv_len))
  elif kind == "segments_nobias":
    return dataclasses.replace(make_case("segments", dtype, batch=batch, q_len=q_len,
                                         kv_len=kv_len, heads=heads, dim=dim, seed=seed),
                               bias=None)
  elif kind == "window":  # bidirectional local window with some key padding
    valid = jax.random.bernoulli(keys[5], 0.8, (batch, kv_len))
    mask = MaskSpec(window=(3, 2), kv_valid=valid)
  elif kind == "left_window":
    mask = MaskSpec(causal=True, window=(5, 0))
  elif kind == "block_sparse":
    mask = MaskSpec(causal=True, block_sparse=BlockSparse(
        block_size=8, window_blocks=1, global_blocks=1, random_blocks=1, seed=7))
  else:
    raise ValueError(kind)
  return Case(q, k, v, bias, mask, ct)


MASK_KINDS = ("none", "bias_full", "causal_padded", "segments", "window", "block_sparse")


def _out_and_grads(fn, case: Case):
  """Jitted output and d(sum(out * ct))/d(q, k, v[, bias])."""
  return _outs_and_grads((fn,), case)[0]


def _outs_and_grads(fns, case: Case):
  """`_out_and_grads` for several engines in one compiled program."""
  with_bias = case.bias is not None
  argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)

  def one(fn, q, k, v, bias, mask):
    def loss(q, k, v, bias):
      out = fn(q, k, v, mask=mask, bias=bias if with_bias else None, scale=0.3)
      return jnp.sum(out.astype(jnp.float32) * case.cotangent), out

    (_, out), grads = jax.value_and_grad(loss, argnums=argnums, has_aux=True)(q, k, v, bias)
    return out, grads

  bias = case.bias if with_bias else jnp.zeros(())
  return _run(lambda *args: [one(fn, *args) for fn in fns],
              case.q, case.k, case.v, bias, case.mask)


@functools.lru_cache(maxsize=None)
def _reference(kind: str, dtype, pointwise: bool):
  fn = POINTWISE_IMPLEMENTATIONS["reference"] if pointwise else IMPLEMENTATIONS["reference"]
  return _out_and_grads(fn, make_case(kind, dtype))


def _assert_close(actual, expected, tol, what):
  actual = np.asarray(jnp.asarray(actual, jnp.float32))
  expected = np.asarray(jnp.asarray(expected, jnp.float32))
  assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
  np.testing.assert_allclose(actual, expected, atol=tol[0], rtol=tol[1], err_msg=what)


def _check_against_reference(fn, kind, dtype, pointwise=False, tol=None):
  case = make_case(kind, dtype)
  out, grads = _out_and_grads(fn, case)
  ref_out, ref_grads = _reference(kind, dtype, pointwise)
  tol = tol or TOL[dtype]
  _assert_close(out, ref_out, tol["out"], f"{kind} output")
  for name, g, rg in zip("q k v bias".split(), grads, ref_grads):
    _assert_close(g, rg, tol["grad"], f"{kind} d{name}")
  if kind == "causal_padded":  # batch row 1 sees no key: zeros out, zero grads
    assert np.all(np.asarray(out[1]) == 0)
    for g in grads[:3]:
      assert np.all(np.asarray(g[1]) == 0)
  if kind == "segments":  # queries of segment 0 (padding) see nothing
    assert np.all(np.asarray(out[:, -5:]) == 0)


# Small blocks so that the 46-long test sequences span several, partial blocks.
_blockwise = functools.partial(blockwise_attention, block_q=16, block_k=8)
_blockwise_pointwise = functools.partial(blockwise_attention, kind="pointwise", block_q=8,
                                         block_k=16)


def _cases(f32_kinds, bf16_kinds):
  """(kind, dtype) pairs: bf16 runs on representative masks only, to keep the suite fast."""
  return ([pytest.param(k, jnp.float32, id=f"{k}-f32") for k in f32_kinds]
          + [pytest.param(k, jnp.bfloat16, id=f"{k}-bf16") for k in bf16_kinds])


@pytest.mark.parametrize("kind,dtype", _cases(MASK_KINDS, ["bias_full", "causal_padded", "segments"]))
def test_blockwise_matches_reference(kind, dtype):
  _check_against_reference(_blockwise, kind, dtype)


# "none" and "window" are left to the property test, which covers pointwise too.
_POINTWISE_KINDS = [k for k in MASK_KINDS if k not in ("none", "window")]


@pytest.mark.parametrize("kind,dtype", _cases(_POINTWISE_KINDS,
                                              [k for k in _POINTWISE_KINDS if k != "bias_full"]))
def test_blockwise_pointwise_matches_reference(kind, dtype):
  _check_against_reference(_blockwise_pointwise, kind, dtype, pointwise=True)


@pytest.mark.parametrize("kind,dtype", _cases(MASK_KINDS, ["causal_padded", "segments"]))
def test_xla_matches_reference(kind, dtype):
  _check_against_reference(IMPLEMENTATIONS["xla"], kind, dtype)


@pytest.mark.parametrize("kind", ["none", "causal_padded", "segments_nobias"])
def test_pallas_matches_reference(kind):
  # Interpret mode off GPU: same kernel code, executed by the Pallas interpreter.
  # On GPU the Triton kernel's float32 dots run in TF32: bf16-level tolerance.
  fn = functools.partial(pallas_attention, interpret=not ON_GPU)
  tol = TOL[jnp.bfloat16 if ON_GPU else jnp.float32]
  if kind == "segments_nobias":
    case = make_case(kind, jnp.float32)
    (out, grads), (ref_out, ref_grads) = _outs_and_grads((fn, IMPLEMENTATIONS["reference"]), case)
    _assert_close(out, ref_out, tol["out"], "output")
    for g, rg in zip(grads, ref_grads):
      _assert_close(g, rg, tol["grad"], "grad")
  else:
    _check_against_reference(fn, kind, jnp.float32, tol=tol)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["none", "bias_full", "causal_padded", "left_window",
                                  "segments", "block_sparse"])
def test_cudnn_matches_reference(kind):
  case = make_case(kind, jnp.bfloat16)
  out, grads = _out_and_grads(IMPLEMENTATIONS["cudnn"], case)
  ref_out, ref_grads = _out_and_grads(IMPLEMENTATIONS["reference"], case)
  _assert_close(out, ref_out, TOL[jnp.bfloat16]["out"], f"{kind} output")
  for g, rg in zip(grads, ref_grads):
    _assert_close(g, rg, TOL[jnp.bfloat16]["grad"], f"{kind} grad")


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["causal_padded", "segments_nobias"])
def test_pallas_gpu_bf16(kind):
  case = make_case(kind, jnp.bfloat16)
  out, grads = _out_and_grads(IMPLEMENTATIONS["pallas"], case)
  ref_out, ref_grads = _out_and_grads(IMPLEMENTATIONS["reference"], case)
  _assert_close(out, ref_out, TOL[jnp.bfloat16]["out"], "output")
  for g, rg in zip(grads, ref_grads):
    _assert_close(g, rg, TOL[jnp.bfloat16]["grad"], "grad")


@st.composite
def random_cases(draw):
  batch = draw(st.integers(1, 2))
  q_len = draw(st.integers(1, 40))
  kv_len = draw(st.sampled_from([q_len, draw(st.integers(1, 40))]))
  heads, dim = draw(st.sampled_from([1, 2])), draw(st.sampled_from([4, 8]))
  seed = draw(st.integers(0, 2**16))
  keys = jax.random.split(jax.random.key(seed), 6)
  mask_fields = {}
  mask_fields["causal"] = draw(st.booleans())
  if draw(st.booleans()):
    mask_fields["window"] = (draw(st.integers(0, 9)), draw(st.integers(0, 9)))
  if draw(st.booleans()):
    valid = jax.random.bernoulli(keys[0], draw(st.sampled_from([0.0, 0.5, 0.9])),
                                 (batch, kv_len))
    mask_fields["kv_valid"] = valid
  if q_len == kv_len and draw(st.booleans()):
    seg = jnp.cumsum(jax.random.bernoulli(keys[1], 0.15, (batch, q_len)), axis=1)
    seg = jnp.where(jnp.arange(q_len) < q_len - draw(st.integers(0, 3)), seg + 1, 0)
    mask_fields.update(q_segment_ids=seg, kv_segment_ids=seg)
  if draw(st.booleans()):
    mask_fields["block_sparse"] = BlockSparse(
        block_size=draw(st.sampled_from([4, 8])), window_blocks=draw(st.integers(0, 1)),
        global_blocks=draw(st.integers(0, 1)), random_blocks=draw(st.integers(0, 2)),
        seed=draw(st.integers(0, 3)))
  bias_shape = draw(st.sampled_from([None, (1, heads, q_len, kv_len), (batch, 1, 1, kv_len),
                                     (batch, heads, q_len, 1)]))
  bias = None if bias_shape is None else jax.random.normal(keys[2], bias_shape)
  qkv = [jax.random.normal(key, (batch, n, heads, dim))
         for key, n in zip(keys[3:], (q_len, kv_len, kv_len))]
  case = Case(*qkv, bias, MaskSpec(**mask_fields),
              jax.random.normal(keys[0], (batch, q_len, heads, dim)))
  blocks = dict(block_q=draw(st.sampled_from([4, 8, 16])),
                block_k=draw(st.sampled_from([4, 8, 16])))
  return case, blocks, draw(st.sampled_from(["softmax", "pointwise"]))


# Drawing a case builds JAX arrays, which is slow on a loaded 2-core machine.
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(random_cases())
def test_blockwise_property(args):
  case, blocks, kind = args
  fn = functools.partial(blockwise_attention, kind=kind, **blocks)
  ref = (IMPLEMENTATIONS if kind == "softmax" else POINTWISE_IMPLEMENTATIONS)["reference"]
  # One compile for both sides: compiles dominate this test's time.
  (out, grads), (ref_out, ref_grads) = _outs_and_grads((fn, ref), case)
  _assert_close(out, ref_out, TOL[jnp.float32]["out"], "output")
  for g, rg in zip(grads, ref_grads):
    _assert_close(g, rg, TOL[jnp.float32]["grad"], "grad")
  # Rows that see nothing are exactly zero.
  visible = np.asarray(jnp.any(dense_mask(case.mask, *case.q.shape[:2], case.k.shape[1]), -1))
  assert np.all(np.asarray(out)[~visible[:, 0]] == 0)


def test_length_one():
  case = make_case("causal_padded", jnp.float32, q_len=1, kv_len=1)
  for fn in (_blockwise, IMPLEMENTATIONS["xla"]):
    out, grads = _out_and_grads(fn, case)
    ref_out, ref_grads = _out_and_grads(IMPLEMENTATIONS["reference"], case)
    _assert_close(out, ref_out, TOL[jnp.float32]["out"], "output")
    for g, rg in zip(grads, ref_grads):
      _assert_close(g, rg, TOL[jnp.float32]["grad"], "grad")


# --- the blockwise engine really skips invisible tiles ---------------------

def _tiles(mask, length=1024, block=128, batch=1):
  x = jnp.ones((batch, length, 1, 8), jnp.float32)
  stats = _run(lambda x, m: blockwise_stats(x, x, x, mask=m, block_q=block, block_k=block),
               x, mask)
  return int(stats["computed_tiles"]), int(stats["total_tiles"])


def test_blockwise_skips_causal_half():
  computed, total = _tiles(MaskSpec(causal=True))
  assert (computed, total) == (36, 64)  # n(n+1)/2 of n^2 for n = 8 blocks


def test_blockwise_skips_local_window():
  computed, _ = _tiles(MaskSpec(causal=True, window=(127, 0)))
  assert computed == 8 + 7  # the diagonal and the one below it


def test_blockwise_skips_segments_and_padding():
  pos = jnp.arange(1024)[None]
  seg = jnp.where(pos < 512, 1, 2)
  assert _tiles(MaskSpec(q_segment_ids=seg, kv_segment_ids=seg))[0] == 2 * 16
  assert _tiles(MaskSpec(kv_valid=pos < 300))[0] == 8 * 3


def test_blockwise_skips_block_sparse():
  sparse = BlockSparse(block_size=128, window_blocks=1, global_blocks=1, random_blocks=1)
  expected = int(sparse.pattern(1024, 1024).sum())
  assert _tiles(MaskSpec(block_sparse=sparse))[0] == expected < 64


# --- masks, normaliser, dispatch -------------------------------------------

def test_block_sparse_pattern_deterministic():
  a = BlockSparse(block_size=16, random_blocks=2, seed=1).pattern(200, 200)
  b = BlockSparse(block_size=16, random_blocks=2, seed=1).pattern(200, 200)
  c = BlockSparse(block_size=16, random_blocks=2, seed=2).pattern(200, 200)
  assert a.shape == (13, 13) and np.array_equal(a, b) and not np.array_equal(a, c)
  assert a[0].all() and a[:, 0].all()  # global block
  assert np.all(a.sum(1)[1:] >= np.minimum(3 + 2, 13) - 1)  # band + randoms


def test_static_flags_conservative():
  spec = MaskSpec(causal=True, window=(5, 3), block_sparse=BlockSparse(block_size=6))
  dense = np.asarray(dense_mask(spec, 1, 50, 41))[0, 0]
  flags = static_block_flags(spec, 50, 41, 8, 16)
  for i in range(flags.shape[0]):
    for j in range(flags.shape[1]):
      if dense[i * 8:(i + 1) * 8, j * 16:(j + 1) * 16].any():
        assert flags[i, j]


def test_pointwise_normalizer():
  seg = jnp.array([[1, 1, 1, 2, 2, 0]])
  valid = jnp.array([[True, False, True, True, True, True]])
  n = pointwise_normalizer(MaskSpec(q_segment_ids=seg, kv_segment_ids=seg, kv_valid=valid),
                           1, 6, 6)
  np.testing.assert_array_equal(n, [[2, 2, 2, 2, 2, 1]])
  n = pointwise_normalizer(MaskSpec(kv_valid=valid), 1, 6, 6)
  np.testing.assert_array_equal(n, [[5] * 6])


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  # Also for tests that call `attend` eagerly (see `_run`).
  with jax.default_matmul_precision("highest"):
    yield


def test_auto_picks_valid_implementation():
  q32 = jnp.zeros((1, 4096, 2, 32), jnp.float32)
  q16 = q32.astype(jnp.bfloat16)
  causal = MaskSpec(causal=True)
  padded = MaskSpec(causal=True, kv_valid=jnp.ones((1, 4096), bool))
  assert select_implementation(q32, q32, mask=causal, backend="cpu") == "blockwise"
  assert select_implementation(q16, q16, mask=causal, backend="gpu") == "cudnn"
  assert select_implementation(q16, q16, mask=padded, backend="gpu") == "pallas"
  windowed = MaskSpec(window=(8, 8), kv_valid=padded.kv_valid)
  assert select_implementation(q16, q16, mask=windowed, backend="gpu") == "blockwise"
  assert select_implementation(q32[:, :64], q32[:, :64], mask=causal, backend="gpu") == "xla"
  assert select_implementation(q32, q32, mask=causal, kind="pointwise",
                               backend="tpu") == "blockwise"
  # TPU: the splash kernel for causal, windowed, packed and padded masks; not for a bias.
  for mask in (causal, padded, windowed):
    assert select_implementation(q32, q32, mask=mask, backend="tpu") == "pallas"
  bias = jnp.zeros((1, 2, 64, 64))
  assert select_implementation(q32[:, :64], q32[:, :64], mask=causal, bias=bias, backend="tpu") == "xla"
  for backend in ("cpu", "gpu", "tpu"):
    for kind, registry in (("softmax", IMPLEMENTATIONS), ("pointwise", POINTWISE_IMPLEMENTATIONS)):
      assert select_implementation(q16, q16, mask=padded, kind=kind, backend=backend) in registry
  case = make_case("causal_padded", jnp.float32)
  out, ref = _run(lambda q, k, v, m: (attend(q, k, v, mask=m),
                                      attend(q, k, v, mask=m, implementation="reference")),
                  case.q, case.k, case.v, case.mask)
  _assert_close(out, ref, TOL[jnp.float32]["out"], "auto")


def test_attend_pointwise_kind():
  case = make_case("causal_padded", jnp.float32)
  out, ref = _run(
      lambda q, k, v, m: [attend(q, k, v, mask=m, kind="pointwise", implementation=name)
                          for name in ("blockwise", "reference")],
      case.q, case.k, case.v, case.mask)
  _assert_close(out, ref, TOL[jnp.float32]["out"], "pointwise")
  with pytest.raises(ValueError, match="pointwise"):
    attend(case.q, case.k, case.v, kind="pointwise", implementation="xla")


@pytest.mark.skipif(ON_GPU, reason="checks the error raised off GPU")
def test_gpu_only_implementations_raise_clearly():
  x = jnp.zeros((1, 8, 1, 8), jnp.bfloat16)
  with pytest.raises(RuntimeError, match=f"cudnn.*{BACKEND}"):
    attend(x, x, x, implementation="cudnn")
  with pytest.raises(RuntimeError, match=f"pallas.*{BACKEND}"):
    attend(x, x, x, implementation="pallas")


def test_pallas_rejects_unsupported_masks():
  x = jnp.zeros((1, 8, 1, 8), jnp.float32)
  with pytest.raises(NotImplementedError, match="window"):
    pallas_attention(x, x, x, mask=MaskSpec(window=(2, 2)), bias=None, scale=1.0,
                     interpret=True)
  with pytest.raises(NotImplementedError, match="bias"):
    pallas_attention(x, x, x, mask=None, bias=jnp.zeros((1, 1, 8, 8)), scale=1.0,
                     interpret=True)


def test_model_call_signature():
  """The call the model code makes keeps working for every CPU engine."""
  case = make_case("causal_padded", jnp.float32)
  names = ("reference", "xla", "blockwise")

  def call_all(q, k, v, valid):
    return [attend(q, k, v, mask=MaskSpec(causal=True, kv_valid=valid), implementation=name)
            for name in names]

  ref, *outs = _run(call_all, case.q, case.k, case.v, case.mask.kv_valid)
  for name, out in zip(names[1:], outs):
    _assert_close(out, ref, TOL[jnp.float32]["out"], name)
