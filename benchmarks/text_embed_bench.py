"""Items/s of `text.embed_texts` on ML-100K's item texts with all-MiniLM-L6-v2 (CPU).

    .venv/bin/python benchmarks/text_embed_bench.py            # ~5.5 min on 2 idle cores
    .venv/bin/python benchmarks/text_embed_bench.py --quick    # ~3 min: 1 timed pass, no max_length-128 row, no JSON

Texts: the 1682 ML-100K items as `python -m recattn_jax.embed
--config.data.item_features_path=ml-100k.item` builds them ("Title (year).
Genre, Genre", `data.item_text.item_texts`). The model is `load_pretrained(
fetch_model("minilm"), attention_impl=impl)` for every softmax engine of
`attention.IMPLEMENTATIONS` that runs on CPU (all but "pallas" and "cudnn").

For each (implementation, bucket on/off): one untimed warm-up call that
compiles every batch shape the pass uses, then `--passes` timed calls of
`embed_texts(model, texts, batch_size=64, max_length=64, pooling="mean",
bucket=..., progress=False)` over the whole catalogue; items/s = 1682 / the
median call. With bucketing the warm-up is a full pass (its widths follow the
sorted lengths); without it every batch is [64, max_length], so the warm-up is
one batch of 64 texts, which compiles that one shape. Then the best
(implementation, bucket) pair once more at max_length 128.

`embed_texts` builds a new `jax.jit` on every call, so each call traces and
compiles its shapes again; a warm-up cannot take that out of the timed calls.
The script therefore counts, through `jax.monitoring`, the seconds each call
spends tracing, lowering and compiling (`compile_s`) and reports items/s both
for the whole call (what a caller gets) and without that compile time (the
steady state a cached jit would give). Vectors are compared across every run
(max |difference| to the first run). Writes
benchmarks/results/text_embed_cpu.json (`--out`), with `uptime` at start and
end and the cores other processes kept busy during each run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare_recbole import _cpu_seconds  # noqa: E402  # busy CPU of the machine and of this process

from recattn_jax.attention import IMPLEMENTATIONS  # noqa: E402
from recattn_jax.config import get_default_config  # noqa: E402
from recattn_jax.data.item_text import item_texts  # noqa: E402
from recattn_jax.data.loading import load_split, resolve_paths  # noqa: E402
from recattn_jax.text import load_pretrained  # noqa: E402
from recattn_jax.text.embed import embed_texts  # noqa: E402
from recattn_jax.text.get_model import fetch_model  # noqa: E402

GPU_ONLY = ("pallas", "cudnn")
CPU_IMPLS = [name for name in IMPLEMENTATIONS if name not in GPU_ONLY]
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "text_embed_cpu.json"
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_events: collections.Counter = collections.Counter()


def _listener(name: str, seconds: float, **_) -> None:
  if name in _COMPILE_EVENTS:
    _events[name + ":s"] += seconds
    _events[name + ":n"] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--impls", nargs="+", default=CPU_IMPLS, help=f"default {CPU_IMPLS}")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--max-length", type=int, default=64)
  p.add_argument("--long-max-length", type=int, default=128,
                 help="the extra row for the best pair (0: skip it)")
  p.add_argument("--passes", type=int, default=2, help="timed passes per run (median reported)")
  p.add_argument("--quick", action="store_true", help="1 timed pass, no long row, no JSON")
  p.add_argument("--limit", type=int, default=0, help="only the first N texts (smoke test; no JSON)")
  p.add_argument("--out", default=str(DEFAULT_OUT))
  args = p.parse_args()
  if args.quick:
    args.passes, args.long_max_length = 1, 0
  return args


def _uptime() -> str:
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _timed(fn):
  """(result, wall s, compile s, compiles, own cores used, cores other processes kept busy)."""
  _events.clear()
  cpu0, wall = _cpu_seconds(), time.perf_counter()
  out = fn()
  wall = time.perf_counter() - wall
  cpu1 = _cpu_seconds()
  compile_s = sum(_events[e + ":s"] for e in _COMPILE_EVENTS)
  compiles = int(_events[_COMPILE_EVENTS[-1] + ":n"])
  own = others = None
  if cpu0 and cpu1:
    own = round((cpu1[1] - cpu0[1]) / wall, 2)
    others = round(max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / wall, 2)
  return out, wall, compile_s, compiles, own, others


def catalogue_texts() -> tuple[list[str], dict]:
  config = get_default_config()
  config.data.item_features_path = "ml-100k.item"
  data_config = resolve_paths(config.data)
  split = load_split(data_config)
  texts, stats = item_texts(data_config, split.item_ids)
  return texts[1:], stats  # row 0 is the padding item


def batch_widths(lengths: np.ndarray, batch_size: int, max_length: int, bucket: bool) -> list[int]:
  """The padded width of every batch `embed_texts` runs (its own rule)."""
  if not bucket:
    return [max_length] * (-(-len(lengths) // batch_size))
  ordered = np.sort(np.minimum(lengths, max_length), kind="stable")
  return [min(max_length, -(-max(int(ordered[s:s + batch_size].max()), 1) // 8) * 8)
          for s in range(0, len(ordered), batch_size)]


def run_one(model, texts, lengths, *, impl: str, bucket: bool, max_length: int, args,
            reference: np.ndarray | None) -> tuple[dict, np.ndarray]:
  n = len(texts)
  call = lambda subset: embed_texts(model, subset, batch_size=args.batch_size,  # noqa: E731
                                    max_length=max_length, pooling="mean", bucket=bucket,
                                    progress=False)
  warm_texts = texts if bucket else texts[:args.batch_size]
  _, warm_s, warm_compile_s, warm_compiles, _, warm_others = _timed(lambda: call(warm_texts))
  passes, vectors = [], None
  for _ in range(args.passes):
    vectors, wall, compile_s, compiles, own, others = _timed(lambda: call(texts))
    passes.append({"seconds": round(wall, 3), "compile_s": round(compile_s, 3),
                   "compiles": compiles, "own_cores": own, "other_busy_cores": others})
  median = statistics.median(p["seconds"] for p in passes)
  median_compile = statistics.median(p["compile_s"] for p in passes)
  widths = batch_widths(lengths, args.batch_size, max_length, bucket)
  row = {
      "impl": impl, "bucket": bucket, "max_length": max_length, "batch_size": args.batch_size,
      "items": n, "items_per_s": round(n / median, 1),
      "items_per_s_without_compile": round(n / max(median - median_compile, 1e-9), 1),
      "median_s": round(median, 3), "median_compile_s": round(median_compile, 3),
      "warmup": {"texts": len(warm_texts), "seconds": round(warm_s, 3),
                 "compile_s": round(warm_compile_s, 3), "compiles": warm_compiles,
                 "other_busy_cores": warm_others},
      "passes": passes, "batches": len(widths), "batch_widths": sorted(set(widths)),
      "padded_tokens": int(args.batch_size * sum(widths)),
      "max_abs_diff_to_first_run": (None if reference is None
                                    else float(np.abs(vectors - reference).max())),
  }
  print(f"  {impl:>9} bucket={'on ' if bucket else 'off'} max_length={max_length}: "
        f"{row['items_per_s']:7.1f} items/s (median {median:.2f} s, of it compile "
        f"{median_compile:.2f} s; {row['items_per_s_without_compile']:.1f} items/s without); "
        f"warm-up {warm_s:.2f} s (compile {warm_compile_s:.2f} s, {warm_compiles} shapes); "
        f"others busy {[p['other_busy_cores'] for p in passes]}", flush=True)
  return row, vectors


def table(rows: list[dict]) -> str:
  lines = ["| implementation | bucketing | max_length | items/s (median call) | call s (median) "
           "| of it compile s | items/s without compile | warm-up s (compile s) | batch widths "
           "| padded tokens | other busy cores |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
  for r in rows:
    others = max((p["other_busy_cores"] or 0.0) for p in r["passes"])
    lines.append(
        f"| {r['impl']} | {'on' if r['bucket'] else 'off'} | {r['max_length']} "
        f"| {r['items_per_s']:.0f} | {r['median_s']:.2f} | {r['median_compile_s']:.2f} "
        f"| {r['items_per_s_without_compile']:.0f} "
        f"| {r['warmup']['seconds']:.2f} ({r['warmup']['compile_s']:.2f}) "
        f"| {','.join(map(str, r['batch_widths']))} | {r['padded_tokens']:,} | {others:.2f} |")
  return "\n".join(lines)


def main() -> int:
  args = _parse()
  start_wall, uptime_start = time.perf_counter(), _uptime()
  print(f"start: {uptime_start}", flush=True)
  texts, text_stats = catalogue_texts()
  texts = texts[:args.limit] if args.limit else texts
  folder = fetch_model("minilm")
  models = {impl: load_pretrained(folder, attention_impl=impl) for impl in args.impls}
  tokenizer_model = next(iter(models.values()))
  _, full_mask = tokenizer_model.tokenize(texts, max_length=512)
  lengths = full_mask.sum(axis=1)
  tokens = {"mean": round(float(lengths.mean()), 2), "max": int(lengths.max()),
            "median": float(np.median(lengths)), "p90": float(np.percentile(lengths, 90)),
            "over_max_length": int((lengths > args.max_length).sum()),
            "counted_with": "[CLS] and [SEP] included, untruncated"}
  print(f"{len(texts)} item texts from {text_stats['item_text_source']} "
        f"({text_stats['items_without_text']} empty); tokens mean {tokens['mean']}, "
        f"max {tokens['max']}, {tokens['over_max_length']} over {args.max_length}", flush=True)

  rows, reference = [], None
  for bucket in (True, False):
    for impl in args.impls:
      row, vectors = run_one(models[impl], texts, lengths, impl=impl, bucket=bucket,
                             max_length=args.max_length, args=args, reference=reference)
      reference = vectors if reference is None else reference
      rows.append(row)
  if args.long_max_length:
    best = max(rows, key=lambda r: r["items_per_s"])
    row, _ = run_one(models[best["impl"]], texts, lengths, impl=best["impl"], bucket=best["bucket"],
                     max_length=args.long_max_length, args=args, reference=reference)
    rows.append(row)

  uptime_end = _uptime()
  wall = time.perf_counter() - start_wall
  print(f"end: {uptime_end}; wall {wall:.0f} s\n")
  print(table(rows))
  report = {
      "benchmark": "text_embed", "model": "all-MiniLM-L6-v2", "model_folder": str(folder),
      "dataset": "ml-100k", "texts": {**text_stats, "count": len(texts), "tokens": tokens,
                                      "example": texts[0]},
      "protocol": {"pooling": "mean", "batch_size": args.batch_size, "max_length": args.max_length,
                   "timed_passes": args.passes, "statistic": "median call",
                   "warmup": "bucket on: one full pass; bucket off: one batch of batch_size "
                             "texts (the only shape)",
                   "compile_s": "trace + lower + XLA compile seconds inside the call "
                                "(jax.monitoring); embed_texts re-jits on every call"},
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "jax": jax.__version__, "backend": jax.default_backend(),
                  "uptime_start": uptime_start, "uptime_end": uptime_end,
                  "wall_seconds": round(wall, 1)},
      "rows": rows,
  }
  if not (args.quick or args.limit):
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
