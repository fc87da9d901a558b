"""Scale benchmark: SASRec on a 10M-item catalogue, item table sharded by rows over 8 CPU devices.

  .venv/bin/python benchmarks/scale_bench.py            # full run (10M items, ~10 min on 2 cores)
  .venv/bin/python benchmarks/scale_bench.py --quick    # smoke run (200k items, < 1 min)

What it shows, on 8 fake CPU devices (`--xla_force_host_platform_device_count=8`,
set here before jax is imported) sharing this host's RAM:

  1. A synthetic catalogue of `--num_items` items with Zipf(`--zipf`) popularity
     (popularity rank -> item id by a random permutation, so popular items are
     spread over the shards as arbitrary ids are) and lognormal history lengths
     (median `--len_median`, sigma `--len_sigma`) clipped to [2, max_len + 1];
     rows are left-padded {"inputs", "targets"} int32 [B, L] next-item batches.
  2. SASRec initialised straight into place with `steps.init_state` on the
     mesh `--mesh` (default data=1 x model=8: the item table and its Adam
     moments split by rows over "model"), trained `--steps` timed steps with the
     full softmax over every item (`next_item_loss(..., padded=True)`).
     Reported: bytes per device from the compiled step's memory analysis, the
     actual per-device bytes of the live sharded state (its addressable
     shards), the process's peak RSS, steps/s, and the collectives of the
     compiled step (the table must never be all-gathered).
  3. The same step with the table replicated (mesh data=8 x model=1, the same
     global batch), compiled from abstract shapes only (nothing allocated) and
     its memory analysis compared with the sharded one's, against this host's
     RAM shared by the 8 devices and against an equal per-device share of it.
  4. Full-catalogue top-K (`steps.make_top_k_step`, seen items excluded) on the
     sharded table: users/s.
  5. With `--compare_items` (default 1M; 0 skips), both layouts at a catalogue
     where both fit, initialised and timed side by side (train steps/s, top-K
     users/s, memory).

The full softmax materialises [B * L, N] float32 logits (per device
[B * L / data, N / model]), and their gradient, so B, L and D are small here
(default 8 rows x L 50, D 32): the point is the memory layout, not a tuned
throughput. Results go to `--out` (default benchmarks/results/scale_cpu.json)
and a markdown table is printed.
"""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recattn_jax.config import get_default_config  # noqa: E402
from recattn_jax.models import build_encoder, init_encoder  # noqa: E402
from recattn_jax.models.item_encoder import table_rows  # noqa: E402
from recattn_jax.parallel import MODEL_AXIS, batch_sharding, make_mesh, tree_shardings  # noqa: E402
from recattn_jax.training.losses import next_item_loss_fn  # noqa: E402
from recattn_jax.training.steps import (TrainState, init_state, make_catalogue_step,  # noqa: E402
                                        make_optimizer, make_top_k_step, make_train_step,
                                        next_item_loss, shard_batch)

GIB = 2 ** 30
MIB = 2 ** 20


# ----------------------------------------------------------------------------
# Synthetic data.


class Catalogue:
  """Zipf popularity over items 1..N and lognormal history lengths."""

  def __init__(self, num_items: int, zipf: float, len_median: float, len_sigma: float,
               max_len: int, seed: int):
    self.num_items, self.max_len = num_items, max_len
    self.len_median, self.len_sigma = len_median, len_sigma
    self.rng = np.random.default_rng(seed)
    weights = np.arange(1, num_items + 1, dtype=np.float64) ** -zipf
    self.cdf = np.cumsum(weights)
    self.cdf /= self.cdf[-1]
    self.top_share = float(weights[0] / weights.sum())
    self.top1pct_share = float(self.cdf[max(num_items // 100, 1) - 1])
    del weights
    # Popularity rank r -> item id perm[r] (1-based ids).
    self.perm = (self.rng.permutation(num_items) + 1).astype(np.int32)

  def items(self, n: int) -> np.ndarray:
    ranks = np.searchsorted(self.cdf, self.rng.random(n), side="right")
    return self.perm[np.minimum(ranks, self.num_items - 1)]

  def lengths(self, n: int) -> np.ndarray:
    raw = self.rng.lognormal(np.log(self.len_median), self.len_sigma, n)
    return np.clip(np.round(raw).astype(np.int64), 2, self.max_len + 1)

  def length_stats(self, n: int = 100_000) -> dict:
    raw = np.round(np.random.default_rng(1).lognormal(np.log(self.len_median), self.len_sigma, n))
    lengths = np.clip(raw, 2, self.max_len + 1)
    return {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
            "p90": float(np.percentile(lengths, 90)),
            "clipped_share": float((raw > self.max_len + 1).mean()),
            # Each history of n events gives n - 1 (input, target) positions of max_len.
            "real_position_share": float((lengths - 1).mean() / self.max_len)}

  def histories(self, n: int) -> list[np.ndarray]:
    lengths = self.lengths(n)
    flat = self.items(int(lengths.sum()))
    return np.split(flat, np.cumsum(lengths)[:-1])

  def train_batch(self, rows: int) -> dict:
    """Left-padded next-item rows: inputs = history[:-1], targets = history[1:]."""
    L = self.max_len
    inputs = np.zeros((rows, L), np.int32)
    targets = np.zeros((rows, L), np.int32)
    for r, h in enumerate(self.histories(rows)):
      n = len(h) - 1
      inputs[r, L - n:] = h[:-1]
      targets[r, L - n:] = h[1:]
    return {"inputs": inputs, "targets": targets}

  def topk_batch(self, rows: int) -> dict:
    """Left-padded newest max_len events; `exclude` is the whole history (0-padded)."""
    L = self.max_len
    hist = self.histories(rows)
    width = max(8, int(2 ** np.ceil(np.log2(max(len(h) for h in hist)))))
    inputs = np.zeros((rows, L), np.int32)
    exclude = np.zeros((rows, width), np.int32)
    for r, h in enumerate(hist):
      newest = h[-L:]
      inputs[r, L - len(newest):] = newest
      exclude[r, :len(h)] = h
    return {"inputs": inputs, "exclude": exclude}


# ----------------------------------------------------------------------------
# Measurements.


def available_ram() -> int:
  with open("/proc/meminfo") as f:
    info = dict(line.split(":", 1) for line in f)
  return int(info["MemAvailable"].split()[0]) * 1024


def total_ram() -> int:
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_stats(compiled) -> dict:
  """Per-device bytes of one compiled SPMD program (the partitioned module, so per device)."""
  m = compiled.memory_analysis()
  out = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
         "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
         "code_bytes": int(m.generated_code_size_in_bytes)}
  # Donated state aliases its outputs: counted once.
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                        + out["temp_bytes"])
  return out


def shard_bytes(tree) -> dict:
  """Actual bytes each device holds of a live (sharded) pytree, and of its item-table leaves."""
  per_device, table_per_device, logical = {}, {}, 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    logical += leaf.nbytes
    is_table = "item_embed" in jax.tree_util.keystr(path)
    for shard in leaf.addressable_shards:
      key = shard.device.id
      per_device[key] = per_device.get(key, 0) + shard.data.nbytes
      if is_table:
        table_per_device[key] = table_per_device.get(key, 0) + shard.data.nbytes
  return {"logical_bytes": int(logical),
          "per_device_max_bytes": int(max(per_device.values())),
          "per_device_min_bytes": int(min(per_device.values())),
          "sum_over_devices_bytes": int(sum(per_device.values())),
          "table_and_moments_per_device_bytes": int(max(table_per_device.values()))}


_SHAPE = re.compile(r"(pred|[sufb]f?\d+|bf16)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
          "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def collectives(compiled) -> dict:
  """Per op kind: count and largest result (bytes, shape) in the compiled HLO."""
  out = {}
  for line in compiled.as_text().splitlines():
    match = re.search(r"=\s*(.*?)\s+(all-gather|all-reduce|reduce-scatter|all-to-all|"
                      r"collective-permute)(-start)?\(", line)
    if not match:
      continue
    kind = match.group(2)
    largest, shape = 0, ""
    for dtype, dims in _SHAPE.findall(match.group(1)):
      size = _BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
      if size > largest:
        largest, shape = size, f"{dtype}[{dims}]"
    entry = out.setdefault(kind, {"count": 0, "largest_bytes": 0, "largest_shape": ""})
    entry["count"] += 1
    if largest > entry["largest_bytes"]:
      entry["largest_bytes"], entry["largest_shape"] = largest, shape
  return out


def largest_collective(summary: dict) -> int:
  return max((entry["largest_bytes"] for entry in summary.values()), default=0)


def _largest(summary: dict) -> str:
  if not summary:
    return "none"
  kind, entry = max(summary.items(), key=lambda item: item[1]["largest_bytes"])
  return f"{kind} of {entry['largest_shape']} ({entry['largest_bytes'] / MIB:.2f} MiB)"


def abstract_state(init_params, optimizer, mesh, seed: int = 0):
  """The train state's shapes with their shardings, as `init_state` would place it (no allocation)."""
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  shapes = jax.eval_shape(lambda key: TrainState.create(init_params(key), optimizer, dropout_key),
                          init_key)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, tree_shardings(shapes, mesh))


def abstract_batch(batch: dict, mesh) -> dict:
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding(mesh))
          for k, v in batch.items()}


class Setup:
  """Model, optimizer and loss of one catalogue size on one mesh (`tasks.ranking_job`'s wiring)."""

  def __init__(self, args, num_items: int, mesh_config: dict, accum_steps: int = 1):
    config = get_default_config()
    config.model.name = "sasrec"
    config.model.sasrec.update(embed_dim=args.embed_dim, num_layers=args.num_layers,
                               num_heads=args.num_heads, ff_dim=4 * args.embed_dim,
                               dropout_rate=0.2, attention_impl=args.attention)
    config.train.batch_size = args.batch_size
    self.config, self.num_items = config, num_items
    self.mesh = make_mesh(mesh_config)
    self.mesh_config = dict(self.mesh.shape)
    self.accum_steps = accum_steps
    self.sharded = self.mesh.shape[MODEL_AXIS] > 1
    self.model = build_encoder(config.model, num_items=num_items, max_len=args.max_len)
    self.optimizer = make_optimizer(config.train, total_steps=max(args.steps + 1, 10))
    self.init_params = functools.partial(init_encoder, self.model, max_len=args.max_len)
    self.batch_loss = next_item_loss(self.model, next_item_loss_fn("softmax"), None,
                                     padded=self.sharded)

  def compile_abstract(self, example_batch: dict):
    """The train step compiled from shapes only: (compiled, seconds)."""
    state = abstract_state(self.init_params, self.optimizer, self.mesh, self.config.seed)
    step = make_train_step(self.batch_loss, self.optimizer, self.mesh, state,
                           accum_steps=self.accum_steps)
    start = time.perf_counter()
    compiled = step.lower(state, abstract_batch(example_batch, self.mesh)).compile()
    return compiled, time.perf_counter() - start

  def init(self):
    start = time.perf_counter()
    state = init_state(self.init_params, self.optimizer, seed=self.config.seed, mesh=self.mesh)
    jax.block_until_ready(state)
    return state, time.perf_counter() - start


def time_train(compiled, state, batches, mesh, warmup: int):
  """(state, seconds per timed step list, losses): `warmup` untimed steps, then the rest timed."""
  times, losses = [], []
  for i, batch in enumerate(batches):
    sharded = shard_batch(batch, mesh)
    jax.block_until_ready(sharded)
    start = time.perf_counter()
    state, metrics = compiled(state, sharded)
    loss = float(metrics["loss"])  # waits for the step
    if i >= warmup:
      times.append(time.perf_counter() - start)
    losses.append(loss)
  return state, times, losses


def time_topk(setup: Setup, params, catalogue: Catalogue, args):
  """Users/s of the full-catalogue top-K step (seen items excluded), and its collectives."""
  top_k_step = make_top_k_step(setup.model, setup.mesh, k=args.k, item_chunk=args.item_chunk)
  batches = [shard_batch(catalogue.topk_batch(args.topk_users), setup.mesh)
             for _ in range(args.topk_batches + 1)]
  table = make_catalogue_step(setup.model, setup.mesh)(params)
  start = time.perf_counter()
  compiled = top_k_step.lower(params, table, batches[0]).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  first = np.asarray(compiled(params, table, batches[0]))
  first_s = time.perf_counter() - start
  times = []
  for batch in batches[1:]:
    start = time.perf_counter()
    ids = np.asarray(compiled(params, table, batch))
    times.append(time.perf_counter() - start)
  # Sanity: ids are real items and never an excluded (seen) one.
  host = {k: np.asarray(v) for k, v in batches[-1].items()}
  seen_hits = sum(len(np.intersect1d(ids[r], host["exclude"][r][host["exclude"][r] > 0]))
                  for r in range(len(ids)))
  valid = bool(((ids >= 1) & (ids <= setup.num_items)).all()
               and first.shape == (args.topk_users, args.k))
  return {"users_per_batch": args.topk_users, "k": args.k, "item_chunk": args.item_chunk,
          "exclude_width": int(host["exclude"].shape[1]), "compile_s": round(compile_s, 2),
          "first_call_s": round(first_s, 3), "batches_timed": len(times),
          "seconds_per_batch": [round(t, 4) for t in times],
          "users_per_s": round(args.topk_users * len(times) / sum(times), 2),
          "ids_valid": valid, "seen_items_recommended": int(seen_hits),
          "collectives": collectives(compiled)}


def summarise_train(times, losses, batch_rows, max_len):
  mean = sum(times) / len(times)
  return {"steps_timed": len(times), "seconds_per_step": [round(t, 4) for t in times],
          "mean_step_s": round(mean, 4), "steps_per_s": round(1.0 / mean, 4),
          "positions_per_s": round(batch_rows * max_len / mean, 1),
          "losses": [round(x, 4) for x in losses], "losses_finite": bool(np.isfinite(losses).all())}


def fits(total_per_device: int, devices: int, ram: int) -> dict:
  return {"sum_over_devices_bytes": total_per_device * devices,
          "fits_host_ram": total_per_device * devices <= ram,
          "fits_per_device_share": total_per_device <= ram // devices}


# ----------------------------------------------------------------------------
# The benchmark.


def parse_mesh(text: str) -> dict:
  data, model = (int(x) for x in text.lower().split("x"))
  return {"data": data, "model": model}


def run(args) -> dict:
  devices = jax.device_count()
  ram, ram_avail = total_ram(), available_ram()
  sharded_mesh = parse_mesh(args.mesh)
  replicated_mesh = {"data": sharded_mesh["data"] * sharded_mesh["model"], "model": 1}
  if args.batch_size % replicated_mesh["data"]:
    raise SystemExit(f"--batch_size {args.batch_size} must divide over the replicated layout's "
                     f"{replicated_mesh['data']} data-parallel devices")
  if args.batch_size % (args.accum_steps * sharded_mesh["data"]):
    raise SystemExit(f"--batch_size {args.batch_size} must divide into --accum_steps "
                     f"{args.accum_steps} micro-batches over {sharded_mesh['data']} data groups")
  # The replicated layout splits every micro-batch over all devices: the most accumulation that allows.
  replicated_accum = max(a for a in range(1, args.accum_steps + 1)
                         if args.batch_size % (a * replicated_mesh["data"]) == 0)
  # A copy: vars(args) is args' own namespace.
  arg_values = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()}
  result = {"args": arg_values, "replicated_accum_steps": replicated_accum,
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": devices, "cpu_cores": os.cpu_count(), "machine": platform.machine(),
            "host_ram_bytes": ram, "host_ram_available_bytes_at_start": ram_avail,
            "load_average_at_start": os.getloadavg()}
  print(f"{devices} {jax.default_backend()} devices, {os.cpu_count()} cores, "
        f"RAM {ram / GIB:.1f} GiB ({ram_avail / GIB:.1f} available), load {os.getloadavg()[0]:.2f}",
        flush=True)

  # 1. Data.
  start = time.perf_counter()
  catalogue = Catalogue(args.num_items, args.zipf, args.len_median, args.len_sigma, args.max_len,
                        args.seed)
  batches = [catalogue.train_batch(args.batch_size) for _ in range(args.steps + args.warmup)]
  result["data"] = {"num_items": args.num_items, "table_rows": table_rows(args.num_items),
                    "zipf_exponent": args.zipf, "top_item_share": catalogue.top_share,
                    "top_1pct_items_share": catalogue.top1pct_share,
                    "lengths": {"distribution": f"lognormal(median={args.len_median}, "
                                                f"sigma={args.len_sigma}) clipped to "
                                                f"[2, {args.max_len + 1}]",
                                **catalogue.length_stats()},
                    "seconds": round(time.perf_counter() - start, 2)}
  print(f"catalogue of {args.num_items:,} items: {result['data']['seconds']} s", flush=True)

  # 2-3. The big catalogue: sharded (allocated and trained) vs replicated (compiled only).
  big = {}
  rep = Setup(args, args.num_items, replicated_mesh, replicated_accum)
  rep_compiled, rep_compile_s = rep.compile_abstract(batches[0])
  big["replicated"] = {"mesh": rep.mesh_config, "compile_s": round(rep_compile_s, 2),
                       "memory_per_device": memory_stats(rep_compiled),
                       "collectives": collectives(rep_compiled), "allocated": False}
  del rep_compiled
  print(f"replicated {rep.mesh_config}: compiled from shapes in {rep_compile_s:.1f} s, "
        f"{big['replicated']['memory_per_device']['total_bytes'] / GIB:.2f} GiB/device", flush=True)

  shd = Setup(args, args.num_items, sharded_mesh, args.accum_steps)
  compiled, compile_s = shd.compile_abstract(batches[0])
  mem = memory_stats(compiled)
  need = mem["total_bytes"] * devices
  if need > 0.9 * available_ram():
    raise SystemExit(f"sharded step needs ~{need / GIB:.1f} GiB over {devices} devices, more than "
                     f"90% of the {available_ram() / GIB:.1f} GiB available: lower --num_items, "
                     "--batch_size, --max_len or --embed_dim")
  state, init_s = shd.init()
  live = shard_bytes(state)
  rss_after_init = current_rss()
  print(f"sharded {shd.mesh_config}: compiled in {compile_s:.1f} s, initialised in {init_s:.1f} s, "
        f"{live['per_device_max_bytes'] / GIB:.2f} GiB state/device", flush=True)
  state, times, losses = time_train(compiled, state, batches, shd.mesh, args.warmup)
  big["sharded"] = {"mesh": shd.mesh_config, "compile_s": round(compile_s, 2),
                    "init_s": round(init_s, 2), "memory_per_device": mem,
                    "live_state": live, "collectives": collectives(compiled), "allocated": True,
                    "rss_after_init_bytes": rss_after_init, "peak_rss_bytes": peak_rss(),
                    "train": summarise_train(times, losses, args.batch_size, args.max_len)}
  print(f"  train: {big['sharded']['train']['steps_per_s']} steps/s, losses {losses}", flush=True)
  for layout in ("sharded", "replicated"):
    big[layout]["fit"] = fits(big[layout]["memory_per_device"]["total_bytes"], devices, ram)
  # The table must never move whole: no collective of the sharded step carries a table shard.
  shard_table_bytes = table_rows(args.num_items) // sharded_mesh["model"] * args.embed_dim * 4
  big["sharded"]["largest_collective_bytes"] = largest_collective(big["sharded"]["collectives"])
  big["sharded"]["table_shard_bytes"] = shard_table_bytes
  big["sharded"]["table_never_moved"] = big["sharded"]["largest_collective_bytes"] < shard_table_bytes
  del compiled
  big["sharded"]["topk"] = time_topk(shd, state.params, catalogue, args)
  big["sharded"]["topk"]["table_never_moved"] = (
      largest_collective(big["sharded"]["topk"]["collectives"]) < shard_table_bytes)
  big["sharded"]["peak_rss_bytes"] = peak_rss()
  print(f"  top-{args.k}: {big['sharded']['topk']['users_per_s']} users/s", flush=True)
  result["big"] = big
  del state
  gc.collect()

  # 5. Side by side where both fit.
  if args.compare_items:
    small = {}
    cat_small = Catalogue(args.compare_items, args.zipf, args.len_median, args.len_sigma,
                          args.max_len, args.seed)
    small_batches = [cat_small.train_batch(args.batch_size) for _ in range(args.steps + args.warmup)]
    for layout, mesh_config in (("sharded", sharded_mesh), ("replicated", replicated_mesh)):
      setup = Setup(args, args.compare_items, mesh_config,
                    args.accum_steps if layout == "sharded" else replicated_accum)
      compiled, compile_s = setup.compile_abstract(small_batches[0])
      mem = memory_stats(compiled)
      if mem["total_bytes"] * devices > 0.9 * available_ram():
        small[layout] = {"mesh": setup.mesh_config, "memory_per_device": mem, "skipped": "RAM"}
        continue
      state, init_s = setup.init()
      state, times, losses = time_train(compiled, state, small_batches, setup.mesh, args.warmup)
      small[layout] = {"mesh": setup.mesh_config, "compile_s": round(compile_s, 2),
                       "init_s": round(init_s, 2), "memory_per_device": mem,
                       "live_state": shard_bytes(state), "collectives": collectives(compiled),
                       "train": summarise_train(times, losses, args.batch_size, args.max_len),
                       "topk": time_topk(setup, state.params, cat_small, args)}
      print(f"{args.compare_items:,} items {layout}: {small[layout]['train']['steps_per_s']} "
            f"steps/s, top-{args.k} {small[layout]['topk']['users_per_s']} users/s", flush=True)
      del state, compiled
      gc.collect()
    result["compare"] = {"num_items": args.compare_items, **small}
  result["peak_rss_bytes"] = peak_rss()
  result["load_average_at_end"] = os.getloadavg()
  return result


# ----------------------------------------------------------------------------
# Report.


def _gib(b):
  return f"{b / GIB:.2f}"


def table(result: dict) -> str:
  args, big, d = result["args"], result["big"], result["data"]
  n, devices, ram = d["num_items"], result["devices"], result["host_ram_bytes"]
  lines = [f"| items | table layout (mesh data x model) | state/device (GiB) "
           f"| temporaries/device (GiB) | total/device (GiB) | x {devices} devices (GiB) "
           f"| fits in {_gib(ram)} GiB RAM | live state/device, measured (GiB) | train steps/s "
           f"| top-{args['k']} users/s |",
           "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|"]

  def row(items, layout, entry):
    mem = entry["memory_per_device"]
    total = mem["total_bytes"]
    fit = "yes" if total * devices <= ram else "**no**"
    live = (_gib(entry["live_state"]["per_device_max_bytes"]) if "live_state" in entry
            else "not allocated")
    train = f"{entry['train']['steps_per_s']:.3f}" if "train" in entry else "-"
    topk = f"{entry['topk']['users_per_s']:.0f}" if "topk" in entry else "-"
    mesh = entry["mesh"]
    lines.append(f"| {items:,} | {layout} ({mesh['data']}x{mesh['model']}) "
                 f"| {_gib(mem['argument_bytes'])} | {_gib(mem['temp_bytes'])} | {_gib(total)} "
                 f"| {_gib(total * devices)} | {fit} | {live} | {train} | {topk} |")

  row(n, "sharded by rows", big["sharded"])
  row(n, "replicated", big["replicated"])
  for layout in ("sharded", "replicated"):
    if layout in result.get("compare", {}):
      row(result["compare"]["num_items"], "sharded by rows" if layout == "sharded" else layout,
          result["compare"][layout])
  micro = args["batch_size"] // args["accum_steps"]
  replicated_devices = big["replicated"]["mesh"]["data"]
  rep_state = big["replicated"]["memory_per_device"]["argument_bytes"]
  load = result["load_average_at_start"][0], result["load_average_at_end"][0]
  notes = [
      "",
      f"- Model: SASRec, {args['num_layers']} layers, D={args['embed_dim']}, "
      f"{args['num_heads']} head(s), full-softmax loss over every item, AdamW. Batch "
      f"{args['batch_size']} rows x L={args['max_len']}; the sharded step accumulates "
      f"{args['accum_steps']} micro-batches of {micro} row(s) "
      f"(`make_train_step(accum_steps={args['accum_steps']})`), the replicated one "
      f"{result['replicated_accum_steps']} micro-batch(es) of "
      f"{args['batch_size'] // result['replicated_accum_steps']} rows split over its "
      f"{replicated_devices} data-parallel devices, so a device holds "
      f"[{args['max_len'] * micro // big['sharded']['mesh']['data']}, "
      f"N/{big['sharded']['mesh']['model']}] (sharded) or "
      f"[{args['max_len'] * args['batch_size'] // result['replicated_accum_steps'] // replicated_devices}, N] "
      f"(replicated) float32 logits at a time. These sizes are chosen so that one "
      f"sharded step at {n:,} items fits comfortably in this host's RAM; they are not a "
      f"training recipe.",
      f"- Data: {n:,} items (table {d['table_rows']:,} rows), Zipf({d['zipf_exponent']}) "
      f"popularity with popularity ranks randomly permuted over item ids (top 1% of items: "
      f"{100 * d['top_1pct_items_share']:.0f}% of events); history lengths "
      f"{d['lengths']['distribution']}: mean {d['lengths']['mean']:.1f}, median "
      f"{d['lengths']['median']:.0f}, p90 {d['lengths']['p90']:.0f}, "
      f"{100 * d['lengths']['clipped_share']:.1f}% clipped; {100 * d['lengths']['real_position_share']:.0f}% "
      f"of the [B, L] positions are real events (left padding), the rest still cost logits.",
      f"- Memory: per device, from the compiled train step's `memory_analysis()` (arguments = "
      f"train state + batch; total = arguments + outputs - donated aliases + temporaries). The "
      f"replicated {n:,}-item step is compiled from abstract shapes only and never allocated. "
      f"The {devices} devices are fake CPU devices sharing one host, so a layout fits when "
      f"{devices} x total <= host RAM. The replicated train state alone (table + 2 Adam moments "
      f"on every device) is {_gib(rep_state)} GiB/device, {_gib(rep_state * devices)} GiB in all"
      f"{' (more than the RAM before any activation)' if rep_state * devices > ram else ''}. "
      f"Live state/device: the largest per-device sum of the "
      f"sharded state's addressable shards (table + Adam moments + replicated rest). "
      f"Peak process RSS: {_gib(result['peak_rss_bytes'])} GiB.",
      f"- Collectives (compiled HLO), largest per call: sharded train step "
      f"{_largest(big['sharded']['collectives'])}, its top-K "
      f"{_largest(big['sharded']['topk']['collectives'])} (the table, "
      f"{big['sharded']['table_shard_bytes'] / MIB:.0f} MiB a shard, is never gathered: "
      f"{'yes' if big['sharded']['table_never_moved'] and big['sharded']['topk']['table_never_moved'] else '**NO**'}); "
      f"replicated train step {_largest(big['replicated']['collectives'])} (the data-parallel "
      f"gradient all-reduce of the whole table, every step).",
      f"- Top-K: K={args['k']}, full catalogue, seen items excluded, "
      f"{args['topk_users']} users per call, item chunk {args['item_chunk']}.",
      f"- Machine: {devices} fake CPU devices (`--xla_force_host_platform_device_count={devices}`) "
      f"on {result['cpu_cores']} cores, JAX {result['jax']}. Load average {load[0]:.2f} at start, "
      f"{load[1]:.2f} at end" + (" (**above 2.5: other work was running; times are pessimistic**)"
                                 if max(load) > 2.5 else "") + f"; wall time {result['wall_s']} s.",
  ]
  return "\n".join(lines + notes)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_items", type=int, default=10_000_000)
  parser.add_argument("--compare_items", type=int, default=1_000_000,
                      help="catalogue where both layouts are allocated and timed (0: skip)")
  parser.add_argument("--mesh", default="1x8", help="sharded mesh DATAxMODEL (replicated: (D*M)x1)")
  parser.add_argument("--embed_dim", type=int, default=32)
  parser.add_argument("--num_layers", type=int, default=2)
  parser.add_argument("--num_heads", type=int, default=1)
  parser.add_argument("--attention", default="auto", help="model.sasrec.attention_impl")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--max_len", type=int, default=50)
  parser.add_argument("--accum_steps", type=int, default=8,
                      help="micro-batches per sharded train step (steps.make_train_step accum_steps)")
  parser.add_argument("--steps", type=int, default=2, help="timed train steps")
  parser.add_argument("--warmup", type=int, default=1, help="untimed train steps first")
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--topk_users", type=int, default=256)
  parser.add_argument("--topk_batches", type=int, default=2, help="timed top-K calls (after one untimed)")
  parser.add_argument("--item_chunk", type=int, default=4096)
  parser.add_argument("--zipf", type=float, default=1.05)
  parser.add_argument("--len_median", type=float, default=12.0)
  parser.add_argument("--len_sigma", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: 200k items, no side-by-side run, 2 timed steps, 1 timed top-K call "
                           "(explicit flags win); writes no JSON unless --out is given")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="JSON results (default benchmarks/results/scale_cpu.json; "
                           "with --quick, none unless given)")
  args = parser.parse_args(argv)
  if args.quick:  # smaller defaults; flags given explicitly win
    for name, value in (("num_items", 200_000), ("compare_items", 0), ("steps", 2),
                        ("topk_batches", 1)):
      if getattr(args, name) == parser.get_default(name):
        setattr(args, name, value)
  if args.out is None and not args.quick:
    args.out = REPO / "benchmarks" / "results" / "scale_cpu.json"
  wall = time.perf_counter()
  result = run(args)
  result["wall_s"] = round(time.perf_counter() - wall, 1)
  result["args"]["out"] = None if args.out is None else str(args.out)
  result["markdown"] = table(result)
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
  print()
  print(result["markdown"])
  print(f"\nwall time {result['wall_s']} s" + (f"; results in {args.out}" if args.out else ""))


if __name__ == "__main__":
  main()
