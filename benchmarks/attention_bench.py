"""Time and memory of every attention implementation.

For each mask (causal, local causal window), sequence length and
implementation: median wall time of the jitted forward and forward+backward
(after one warm-up call), and the compiled program's memory need from
`jax.jit(f).lower(...).compile().memory_analysis()` (argument + output +
temporary bytes). Programs whose need exceeds `--max-run-gib` are compiled but
not run, so `reference` at 16k is reported without allocating it.

    python benchmarks/attention_bench.py            # full: L in 128..16384
    python benchmarks/attention_bench.py --quick    # L in 128, 512, 2048

Writes benchmarks/results/attention_<backend>.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from recattn_jax.attention import MaskSpec, attend, blockwise_attention  # noqa: E402

GIB = 2**30
FULL_LENGTHS = (128, 512, 2048, 8192, 16384)
QUICK_LENGTHS = (128, 512, 2048)


def _parse() -> argparse.Namespace:
  backend = jax.default_backend()
  default_impls = ["reference", "xla", "blockwise"]
  if backend == "gpu":
    default_impls += ["cudnn", "pallas"]
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--lengths", type=int, nargs="+", default=None)
  p.add_argument("--impls", nargs="+", default=default_impls,
                 help="names from IMPLEMENTATIONS, or blockwise:<tile> to try a tile size")
  p.add_argument("--masks", nargs="+", default=["causal", "local"],
                 choices=["causal", "local", "padded"],
                 help="padded = causal + key padding (kv_valid), as the models call it")
  p.add_argument("--quick", action="store_true", help=f"lengths {QUICK_LENGTHS}, 2 repeats")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--head-dim", type=int, default=32)
  p.add_argument("--window", type=int, default=256, help="local mask: keys [i-window+1, i]")
  p.add_argument("--dtype", default="bfloat16" if backend == "gpu" else "float32")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--max-run-gib", type=float, default=4.0,
                 help="compile but do not run programs that need more than this")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
  args = p.parse_args()
  if args.lengths is None:
    args.lengths = list(QUICK_LENGTHS if args.quick else FULL_LENGTHS)
  if args.quick:
    args.repeats = min(args.repeats, 2)
  return args


def _mask(name: str, args, length: int) -> MaskSpec:
  if name == "causal":
    return MaskSpec(causal=True)
  if name == "padded":  # causal + right padding, lengths uniform in [L/2, L]
    lengths = jax.random.randint(jax.random.key(1), (args.batch, 1), length // 2, length + 1)
    return MaskSpec(causal=True, kv_valid=jnp.arange(length)[None, :] < lengths)
  return MaskSpec(causal=True, window=(args.window - 1, 0))


def _need_bytes(compiled) -> int | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.temp_size_in_bytes + stats.argument_size_in_bytes
          + stats.output_size_in_bytes - getattr(stats, "alias_size_in_bytes", 0))


def _time(fn: Callable, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # warm-up (compilation already done)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _measure(impl: str, mask: MaskSpec, length: int, args) -> dict[str, Any]:
  shape = (args.batch, length, args.heads, args.head_dim)
  keys = jax.random.split(jax.random.key(length), 4)
  q, k, v, ct = (jax.random.normal(key, shape, jnp.float32).astype(args.dtype) for key in keys)

  def forward(q, k, v):
    if impl.startswith("blockwise:"):  # "blockwise:<tile edge>" for tuning
      block = int(impl.split(":")[1])
      return blockwise_attention(q, k, v, mask=mask, bias=None, scale=args.head_dim**-0.5,
                                 block_q=block, block_k=block)
    return attend(q, k, v, mask=mask, implementation=impl)

  def loss(q, k, v):
    return jnp.sum(forward(q, k, v).astype(jnp.float32) * ct.astype(jnp.float32))

  programs = {"fwd": jax.jit(forward), "fwd_bwd": jax.jit(jax.grad(loss, argnums=(0, 1, 2)))}
  row: dict[str, Any] = {"impl": impl, "L": length}
  for name, fn in programs.items():
    try:
      compiled = fn.lower(q, k, v).compile()
    except Exception as e:  # unsupported mask / backend: record why
      row["status"] = f"unsupported: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
      return row
    need = _need_bytes(compiled)
    row[f"{name}_bytes"] = need
    if need is not None and need > args.max_run_gib * GIB:
      row[f"{name}_ms"] = None
      row["status"] = f"not run: needs {need / GIB:.1f} GiB"
      continue
    try:
      row[f"{name}_ms"] = 1e3 * _time(compiled, (q, k, v), args.repeats)
    except Exception as e:  # e.g. out of device memory despite the estimate
      row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
      return row
  row.setdefault("status", "ok")
  return row


def _fmt_ms(x):
  return "-" if x is None else f"{x:10.1f}"


def _fmt_gib(x):
  return "-" if x is None else f"{x / GIB:8.3f}"


def _print_table(mask_name: str, rows: list[dict[str, Any]]):
  print(f"\n## mask = {mask_name}")
  print(f"{'L':>6} {'impl':>10} {'fwd ms':>10} {'fwd+bwd ms':>11} {'fwd GiB':>8} "
        f"{'f+b GiB':>8}  status")
  for r in rows:
    print(f"{r['L']:>6} {r['impl']:>10} {_fmt_ms(r.get('fwd_ms')):>10} "
          f"{_fmt_ms(r.get('fwd_bwd_ms')):>11} {_fmt_gib(r.get('fwd_bytes')):>8} "
          f"{_fmt_gib(r.get('fwd_bwd_bytes')):>8}  {r['status']}")
  by_len: dict[int, dict[str, dict]] = {}
  for r in rows:
    by_len.setdefault(r["L"], {})[r["impl"]] = r
  for length, impls in by_len.items():
    ref, blk = impls.get("reference"), impls.get("blockwise")
    if ref and blk and ref.get("fwd_bwd_bytes") and blk.get("fwd_bwd_bytes"):
      ratio = blk["fwd_bwd_bytes"] / ref["fwd_bwd_bytes"]
      print(f"  L={length}: blockwise / reference memory (fwd+bwd) = {ratio:.4f} "
            f"(reference needs {1 / ratio:.1f}x more)")


def main():
  args = _parse()
  backend = jax.default_backend()
  device = jax.devices()[0]
  results: dict[str, Any] = {
      "command": " ".join(["python"] + sys.argv),
      "backend": backend,
      "device": getattr(device, "device_kind", str(device)),
      "jax": jax.__version__,
      "python": platform.python_version(),
      "shape": {"batch": args.batch, "heads": args.heads, "head_dim": args.head_dim},
      "dtype": args.dtype, "window": args.window, "repeats": args.repeats,
      "max_run_gib": args.max_run_gib, "results": {},
  }
  print(f"backend={backend} device={results['device']} jax={jax.__version__} dtype={args.dtype} "
        f"B={args.batch} H={args.heads} D={args.head_dim}", flush=True)
  out = pathlib.Path(args.out) if args.out else (
      pathlib.Path(__file__).resolve().parent / "results" / f"attention_{backend}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  for mask_name in args.masks:
    rows = results["results"].setdefault(mask_name, [])
    for length in args.lengths:
      mask = _mask(mask_name, args, length)
      for impl in args.impls:
        row = _measure(impl, mask, length, args)
        rows.append(row)
        print(f"  {mask_name:>6} L={length:>6} {impl:>10}: fwd {_fmt_ms(row.get('fwd_ms'))} ms"
              f"  fwd+bwd {_fmt_ms(row.get('fwd_bwd_ms'))} ms  {row['status']}", flush=True)
        # Rewritten after every row so that an interrupted run keeps its numbers.
        out.write_text(json.dumps(results, indent=2))
    _print_table(mask_name, rows)
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
