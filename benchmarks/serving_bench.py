"""Serving latency and throughput of `recattn_jax.Recommender` (CPU), side by side with RecBole 1.2.1.

  .venv/bin/python benchmarks/serving_bench.py            # full measurement (~15-25 min)
  .venv/bin/python benchmarks/serving_bench.py --quick    # smoke run (~6 min)

Four sections, each printed as it runs and summarised in one table at the end:
  1. in-process: `rec.recommend(history, k=10)` latency p50/p99 at batch 1 and
     users/s at batch 64 and 256, SASRec at L=50 and L=200, on a 3,706-item
     (MovieLens-1M size) and a 1,000,000-item catalogue;
  2. sessions: `session.append(item)` + `session.recommend(10)` per event with
     the KV cache against full recomputation (`use_cache=False`), L=50/200/1000;
  3. HTTP: `python -m recattn_jax.serve` in a subprocess under an open-loop load
     of 50, 100 and 200 `POST /recommend` per second;
  4. RecBole 1.2.1's SASRec of the same size (`recbole_serving_side.py`, in
     RecBole's own venv): `full_sort_topk` at batch 1 and 256.

Models are randomly initialised (latency does not depend on training): SASRec,
64 wide, 2 layers, 2 heads, FFN 256, positions counted from the oldest event
(needed for the KV cache), written as a bundle with `write_bundle` and loaded
with `Recommender.load`. Request histories are synthetic, with Zipf-ish item
popularity, and each holds exactly L events (a full window).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare_recbole import (DEFAULT_VENV, THREADS, _child_env, _cpu_seconds,  # noqa: E402
                             ensure_recbole_venv, machine_info, with_contention, write_json)

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
ML1M_ITEMS = 3706
MILLION = 1_000_000
MODEL = dict(embed_dim=64, num_layers=2, num_heads=2, ff_dim=256)
K = 10
TARGETS = {
    "p50_ms_batch1_L200_3706": 5.0,      # in-process, batch 1, L=200, 3.7k items
    "p50_ms_batch1_1M": 30.0,            # in-process, batch 1, 1M items (each L)
    "session_cache_speedup_L1000": 5.0,  # append + recommend, cached vs recomputed
    "http_p99_ms_at_100rps": 50.0,       # and 0 errors
    "recbole_speedup": 2.0,              # batch-1 latency and batch-256 users/s
}


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything that differs between --quick and the full run."""

  lengths: tuple[int, ...]           # in-process (3.7k items) and RecBole L
  million_lengths: tuple[int, ...]   # in-process L with 1M items
  session_lengths: tuple[int, ...]
  batch_sizes: tuple[int, ...]
  warmup: int                        # untimed calls before each measurement
  latency_calls: int                 # batch-1 calls timed (3.7k items)
  million_latency_calls: int         # batch-1 calls timed (1M items)
  batch_calls: int                   # timed calls per batch size
  session_events: int                # timed events per session length and mode
  http_rates: tuple[int, ...]
  http_seconds: float
  recbole_omp_wait_policies: tuple[str, ...]


FULL = Plan(lengths=(50, 200), million_lengths=(50, 200), session_lengths=(50, 200, 1000),
            batch_sizes=(64, 256), warmup=20, latency_calls=1000, million_latency_calls=200, batch_calls=30,
            session_events=300, http_rates=(50, 100, 200), http_seconds=30.0,
            recbole_omp_wait_policies=("default", "PASSIVE"))
QUICK = Plan(lengths=(50, 200), million_lengths=(50,), session_lengths=(50, 200, 1000),
             batch_sizes=(64, 256), warmup=5, latency_calls=100, million_latency_calls=20, batch_calls=5,
             session_events=40, http_rates=(50, 100, 200), http_seconds=5.0,
             recbole_omp_wait_policies=("default", "PASSIVE"))


def progress(message: str) -> None:
  print(message, flush=True)


def percentiles(seconds: list[float]) -> dict:
  ms = np.asarray(seconds) * 1e3
  return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
          "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
          "min_ms": float(ms.min()), "max_ms": float(ms.max())}


# ------------------------------------------------------------ synthetic bundles

def zipf_items(rng: np.random.Generator, num_items: int, size, exponent: float = 1.0) -> np.ndarray:
  """Internal item ids 1..num_items drawn with probability ~ 1 / rank^exponent (rank = id)."""
  weights = 1.0 / np.arange(1, num_items + 1) ** exponent
  cdf = np.cumsum(weights)
  cdf /= cdf[-1]
  return (np.searchsorted(cdf, rng.random(size)) + 1).astype(np.int32)


def synthetic_histories(num_items: int, count: int, length: int, seed: int) -> np.ndarray:
  """[count, length] internal item ids, Zipf-ish."""
  return zipf_items(np.random.default_rng(seed), num_items, (count, length))


def item_names(num_items: int) -> np.ndarray:
  """Original item ids: "<pad>", then "1" .. "N" (as MovieLens' numeric ids)."""
  return np.asarray(["<pad>", *map(str, range(1, num_items + 1))], dtype=object)


def sasrec_config(max_len: int):
  from recattn_jax.config import get_default_config

  config = get_default_config()
  config.data.max_len = max_len
  config.model.name = "sasrec"
  config.model.sasrec.update(positions="start", **MODEL)
  return config


def write_synthetic_bundle(path: pathlib.Path, *, num_items: int, max_len: int,
                           num_users: int = 64, seed: int = 0) -> pathlib.Path:
  """A bundle of a randomly initialised SASRec with `num_items` items, read back by `Recommender.load`."""
  import jax

  from recattn_jax.models import build_encoder, init_encoder
  from recattn_jax.training.bundle import BundleData, write_bundle

  config = sasrec_config(max_len)
  model = build_encoder(config.model, num_items=num_items, max_len=max_len)
  params = init_encoder(model, jax.random.key(seed), max_len=max_len)
  histories = list(synthetic_histories(num_items, num_users, max_len, seed + 1))
  popularity = np.bincount(np.concatenate(histories), minlength=num_items + 1).astype(np.int64)
  popularity[0] = 0
  data = BundleData(item_ids=item_names(num_items),
                    user_ids=np.asarray([f"u{u}" for u in range(num_users)], dtype=object),
                    popularity=popularity, histories=histories,
                    stats={"synthetic": True, "num_items": num_items})
  return write_bundle(path, config=config, params=params, data=data,
                      run={"note": "serving_bench.py: random parameters, synthetic data"})


def load_recommender(workdir: pathlib.Path, num_items: int, max_len: int):
  from recattn_jax import Recommender

  path = workdir / f"sasrec_N{num_items}_L{max_len}"
  start = time.perf_counter()
  write_synthetic_bundle(path, num_items=num_items, max_len=max_len)
  written = time.perf_counter() - start
  rec = Recommender.load(path)
  loaded = time.perf_counter() - start - written
  return rec, path, {"bundle_write_seconds": written, "load_seconds": loaded,
                     "bundle_bytes": sum(f.stat().st_size for f in path.iterdir())}


def request_histories(rec, count: int, length: int, seed: int) -> list[list[str]]:
  """`count` histories of original item ids (strings), `length` events each."""
  internal = synthetic_histories(rec.num_items, count, length, seed)
  return [list(rec.items.ids[row]) for row in internal]


# ------------------------------------------------------------ 1. in-process

def kernel_seconds(rec, history: list[str], calls: int) -> float | None:
  """Median time of the jitted scorer alone on a pre-built batch-1 input (no id lookup,
  no batch building, no result conversion): what `recommend` adds on top is per-call overhead.

  Reads private attributes of `Recommender`; returns None if they changed.
  """
  try:
    from recattn_jax.data.pipeline import eval_batches
    from recattn_jax.serving.lists import list_length

    ids, _, _ = rec.items.lookup(history)
    batch = next(eval_batches([ids], np.ones(1, np.int32), max_len=rec.max_len, batch_size=1,
                              padding=rec.padding, append_mask_id=rec.model.mask_id))
    batch = {key: value for key, value in batch.items() if key not in ("targets", "weight")}
    score = rec._score  # pylint: disable=protected-access
    seconds = []
    for i in range(calls + 3):
      start = time.perf_counter()
      top_scores, top_ids = score(rec.params, rec.table, batch, k=list_length(K))
      np.asarray(top_ids), np.asarray(top_scores)
      if i >= 3:
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)
  except Exception as e:  # noqa: BLE001 - a diagnostic only
    progress(f"  (kernel-only timing skipped: {type(e).__name__}: {e})")
    return None


def batch1_latency(rec, histories: list[list[str]], *, warmup: int, calls: int) -> dict:
  for i in range(warmup):
    out = rec.recommend(histories[i % len(histories)], k=K)
  seconds = []
  for i in range(calls):
    history = histories[i % len(histories)]
    start = time.perf_counter()
    out = rec.recommend(history, k=K)
    np.asarray(out.scores)
    seconds.append(time.perf_counter() - start)
  assert len(out.items) == K, out
  return percentiles(seconds)


def batch_throughput(rec, histories: list[list[str]], batch_size: int, *, warmup: int,
                     calls: int) -> dict:
  batches = [histories[(i * batch_size) % len(histories):][:batch_size] for i in range(4)]
  batches = [b if len(b) == batch_size else (b + histories)[:batch_size] for b in batches]
  for i in range(max(2, warmup // 5)):
    rec.recommend(batches[i % len(batches)], k=K)
  seconds = []
  for i in range(calls):
    start = time.perf_counter()
    out = rec.recommend(batches[i % len(batches)], k=K)
    np.asarray(out[-1].scores)
    seconds.append(time.perf_counter() - start)
  median = statistics.median(seconds)
  return {"batch_size": batch_size, "calls": calls, "median_seconds": median,
          "users_per_second": batch_size / median, "call_seconds": seconds}


def in_process(plan: Plan, args, workdir: pathlib.Path) -> dict:
  catalogues = [(ML1M_ITEMS, plan.lengths)] + ([] if args.skip_million else
                                                [(MILLION, plan.million_lengths)])
  out = {}
  for num_items, lengths in catalogues:
    for max_len in lengths:
      key = f"N{num_items}_L{max_len}"
      progress(f"[1] in-process, {num_items:,} items, L={max_len}: writing and loading the bundle")
      rec, path, setup = load_recommender(workdir, num_items, max_len)
      histories = request_histories(rec, 512, max_len, seed=max_len)
      calls = plan.latency_calls if num_items == ML1M_ITEMS else plan.million_latency_calls

      def measure():
        row = {"num_items": num_items, "max_len": max_len, **setup}
        first = time.perf_counter()
        rec.recommend(histories[0], k=K)
        row["first_call_seconds_with_compile"] = time.perf_counter() - first
        row["batch1"] = batch1_latency(rec, histories, warmup=plan.warmup, calls=calls)
        row["kernel_batch1_median_ms"] = kernel_seconds(rec, histories[0], min(calls, 100))
        if row["kernel_batch1_median_ms"] is not None:
          row["kernel_batch1_median_ms"] *= 1e3
        row["batches"] = {}
        for batch_size in plan.batch_sizes:
          batch_calls = plan.batch_calls if num_items == ML1M_ITEMS else max(3, plan.batch_calls // 3)
          row["batches"][str(batch_size)] = batch_throughput(
              rec, histories, batch_size, warmup=plan.warmup, calls=batch_calls)
        return row

      row = with_contention(f"[1] {key}", measure)
      b1 = row["batch1"]
      kernel = row["kernel_batch1_median_ms"]
      kernel_text = "" if kernel is None else f" (jitted scorer alone {kernel:.2f} ms)"
      progress(f"  batch 1: p50 {b1['p50_ms']:.2f} ms, p99 {b1['p99_ms']:.2f} ms{kernel_text}; "
               + ", ".join(f"batch {b}: {r['users_per_second']:.0f} users/s"
                           for b, r in row["batches"].items()))
      out[key] = row
      rec = None  # let the catalogue go before the next one is loaded
      shutil.rmtree(path, ignore_errors=True)
  return out


# ------------------------------------------------------------ 2. sessions

def session_events(rec, use_cache: bool, max_len: int, events: int, seed: int) -> dict:
  """Per event: `append` + `recommend(K)`, on sessions holding max_len // 2 events at the start.

  Each session takes at most max_len - max_len // 2 - 1 appends, so the window
  never slides; new sessions (not timed) are opened until `events` are timed.
  One whole session is run first, untimed, to compile every shape it meets.
  """
  rng = np.random.default_rng(seed)
  start_len = max_len // 2
  per_session = max(1, min(events, max_len - start_len - 1))
  sessions = -(-events // per_session) + 1
  total, appends, recommends = [], [], []
  uses_cache = None
  for s in range(sessions):
    history = list(rec.items.ids[zipf_items(rng, rec.num_items, start_len)])
    new = list(rec.items.ids[zipf_items(rng, rec.num_items, per_session)])
    session = rec.session(history=history, use_cache=use_cache)
    uses_cache = session.uses_cache
    for item in new:
      begin = time.perf_counter()
      session.append(item)  # with the cache: bookkeeping; the extend runs fused with recommend
      middle = time.perf_counter()
      out = session.recommend(K)
      np.asarray(out.scores)
      end = time.perf_counter()
      if s > 0 and len(total) < events:  # session 0 is the warm-up
        total.append(end - begin)
        appends.append(middle - begin)
        recommends.append(end - middle)
  return {"uses_cache": uses_cache, "start_events": start_len, "appends_per_session": per_session,
          "append_and_recommend": percentiles(total), "append": percentiles(appends),
          "recommend": percentiles(recommends)}


def sessions(plan: Plan, workdir: pathlib.Path) -> dict:
  out = {}
  for max_len in plan.session_lengths:
    progress(f"[2] sessions, {ML1M_ITEMS:,} items, L={max_len}: cached vs recomputed")
    rec, path, setup = load_recommender(workdir, ML1M_ITEMS, max_len)

    def measure():
      row = {"max_len": max_len, **setup}
      row["cached"] = session_events(rec, True, max_len, plan.session_events, seed=max_len)
      row["recomputed"] = session_events(rec, False, max_len, plan.session_events, seed=max_len)
      return row

    row = with_contention(f"[2] L={max_len}", measure)
    if not row["cached"]["uses_cache"]:
      progress("  warning: the cached session does not use the cache (session.uses_cache False)")
    cached = row["cached"]["append_and_recommend"]["p50_ms"]
    recomputed = row["recomputed"]["append_and_recommend"]["p50_ms"]
    row["speedup_p50"] = recomputed / cached
    progress(f"  append + recommend p50: cached {cached:.2f} ms (append call "
             f"{row['cached']['append']['p50_ms']:.2f} ms), recomputed {recomputed:.2f} ms "
             f"-> {row['speedup_p50']:.1f}x")
    out[f"L{max_len}"] = row
    rec = None  # let the catalogue go before the next one is loaded
    shutil.rmtree(path, ignore_errors=True)
  return out


# ------------------------------------------------------------ 3. HTTP

def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def serve_command(bundle: pathlib.Path, port: int) -> list[str] | None:
  """The server's command line, or None when `recattn_jax.serve` is not there (yet)."""
  import importlib.util

  if importlib.util.find_spec("recattn_jax.serve") is None:
    return None
  missing = [m for m in ("uvicorn", "starlette") if importlib.util.find_spec(m) is None]
  if missing:
    progress(f"  the serve extra is not installed here (no {', '.join(missing)})")
    return None
  cmd = [sys.executable, "-m", "recattn_jax.serve", "--bundle", str(bundle), "--port", str(port)]
  # absl's --help exits 1 after printing the flags: only its text is read.
  probe = subprocess.run([sys.executable, "-m", "recattn_jax.serve", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
  if "--host" in probe.stdout + probe.stderr:
    cmd += ["--host", "127.0.0.1"]
  return cmd


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> float:
  import httpx

  start = time.perf_counter()
  while time.perf_counter() - start < timeout:
    if proc.poll() is not None:
      raise RuntimeError(f"the server exited with {proc.returncode} before /healthz answered")
    try:
      if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
        return time.perf_counter() - start
    except httpx.HTTPError:
      pass
    time.sleep(0.2)
  raise TimeoutError(f"{url}/healthz did not answer 200 within {timeout:.0f}s")


class RawClient:
  """A minimal HTTP/1.1 keep-alive client for JSON POSTs, on asyncio streams.

  One connection per outstanding request, at most `max_connections`.
  httpx.AsyncClient spends ~5 ms of CPU per request here, which on 2 cores
  takes a good part of a core from the server at 100 req/s; this one reads the
  status line, the headers and a Content-Length body, nothing more.
  """

  def __init__(self, url: str, max_connections: int, timeout: float):
    host_port = url.removeprefix("http://").rstrip("/")
    self.host, port = host_port.rsplit(":", 1)
    self.port, self.timeout = int(port), timeout
    self.idle: list = []
    self.slots = asyncio.Semaphore(max_connections)

  async def _request(self, connection, head: bytes, body: bytes) -> tuple[int, bytes, bool]:
    """(status, body, whether the connection may be reused)."""
    reader, writer = connection
    writer.write(head + body)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
      raise ConnectionResetError("the server closed the connection")
    status = int(status_line.split()[1])
    length, reusable = None, True
    while True:
      line = await reader.readline()
      if line in (b"\r\n", b""):
        break
      name, _, value = line.partition(b":")
      name = name.strip().lower()
      if name == b"content-length":
        length = int(value)
      elif name == b"connection" and value.strip().lower() == b"close":
        reusable = False
    if length is None:
      raise ValueError("answer without Content-Length")
    return status, await reader.readexactly(length), reusable

  async def _connect(self):
    return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)

  async def post(self, path: str, payload: dict) -> tuple[int, bytes]:
    body = json.dumps(payload).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    async with self.slots:
      reused = bool(self.idle)
      connection = self.idle.pop() if reused else await self._connect()
      try:
        status, answer, reusable = await asyncio.wait_for(
            self._request(connection, head, body), self.timeout)
      except (ConnectionError, asyncio.IncompleteReadError):
        connection[1].close()
        if not reused:
          raise
        # An idle keep-alive connection the server had closed: once more on a new one.
        connection = await self._connect()
        try:
          status, answer, reusable = await asyncio.wait_for(
              self._request(connection, head, body), self.timeout)
        except BaseException:
          connection[1].close()
          raise
      except BaseException:
        connection[1].close()
        raise
      if reusable:
        self.idle.append(connection)
      else:
        connection[1].close()
      return status, answer

  async def aclose(self) -> None:
    for _, writer in self.idle:
      writer.close()
    self.idle.clear()


class HttpxClient:
  """The same interface over httpx.AsyncClient (`--http-client httpx`)."""

  def __init__(self, url: str, max_connections: int, timeout: float):
    import httpx

    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)

  async def post(self, path: str, payload: dict) -> tuple[int, bytes]:
    response = await self.client.post(path, json=payload)
    return response.status_code, response.content

  async def aclose(self) -> None:
    await self.client.aclose()


CLIENTS = {"raw": RawClient, "httpx": HttpxClient}


async def open_loop(url: str, bodies: list[dict], rate: float, seconds: float, *,
                    max_in_flight: int, timeout: float, client: str = "raw") -> dict:
  """Requests sent at fixed times (i / rate), whether or not earlier ones have finished.

  At most `max_in_flight` are outstanding (one connection each); a request that
  finds them all busy waits, and its latency still counts from its scheduled
  time (no coordinated omission). Errors: any answer but 200 with K items, or
  an exception (timeouts included).
  """
  count = max(1, int(rate * seconds))
  latencies, errors, kinds = [], 0, {}
  loop = asyncio.get_running_loop()
  session = CLIENTS[client](url, max_in_flight, timeout)

  async def one(i: int, scheduled: float):
    nonlocal errors
    try:
      status, body = await session.post("/recommend", bodies[i % len(bodies)])
      ok = status == 200 and len(json.loads(body).get("items", ())) == K
      kind = None if ok else f"HTTP {status}"
    except Exception as e:  # noqa: BLE001 - counted, not raised
      ok, kind = False, type(e).__name__
    if ok:
      latencies.append(loop.time() - scheduled)
    else:
      errors += 1
      kinds[kind] = kinds.get(kind, 0) + 1

  try:
    start = loop.time()
    tasks = []
    for i in range(count):
      scheduled = start + i / rate
      delay = scheduled - loop.time()
      if delay > 0:
        await asyncio.sleep(delay)
      tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
  finally:
    await session.aclose()
  row = {"target_rate": rate, "seconds": seconds, "sent": count, "ok": len(latencies),
         "errors": errors, "error_kinds": kinds, "achieved_rate": len(latencies) / elapsed,
         "wall_seconds": elapsed, "client": client, "max_in_flight": max_in_flight}
  if latencies:
    row.update(percentiles(latencies))
  return row


def process_cpu_seconds(pid: int) -> float | None:
  """User + system CPU seconds of a running process (Linux /proc), or None."""
  try:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return None
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_load(proc: subprocess.Popen, run) -> dict:
  """`run()` with the CPU the server, this process (the load generator) and others used meanwhile.

  (`with_contention` would count the live server as another process: only
  finished children are in os.times, so its CPU is read from /proc here.)
  """
  machine_start, wall = _cpu_seconds(), time.perf_counter()
  server_start, client_start = process_cpu_seconds(proc.pid), time.process_time()
  row = run()
  wall = time.perf_counter() - wall
  machine_end, server_end = _cpu_seconds(), process_cpu_seconds(proc.pid)
  row["client_cpu_cores"] = (time.process_time() - client_start) / wall
  others = None
  if server_start is not None and server_end is not None:
    row["server_cpu_cores"] = (server_end - server_start) / wall
    row["server_cpu_ms_per_request"] = (server_end - server_start) * 1e3 / max(1, row["sent"])
    if machine_start and machine_end:
      own = (machine_end[1] - machine_start[1]) + (server_end - server_start)
      others = round(max(0.0, (machine_end[0] - machine_start[0]) - own) / wall, 2)
  row["contention"] = {"other_busy_cores": others, "wall_seconds": wall,
                       "load_average_after": os.getloadavg()}
  return row


def http(plan: Plan, args, workdir: pathlib.Path) -> dict:
  max_len = args.http_max_len
  progress(f"[3] HTTP, {ML1M_ITEMS:,} items, L={max_len}: starting python -m recattn_jax.serve")
  path = workdir / f"http_N{ML1M_ITEMS}_L{max_len}"
  write_synthetic_bundle(path, num_items=ML1M_ITEMS, max_len=max_len)
  port = free_port()
  cmd = serve_command(path, port)
  if cmd is None:
    progress("  skipped: recattn_jax.serve or its serve extra is not there")
    return {"skipped": "recattn_jax.serve or its serve extra (uvicorn, starlette) is not available"}
  url = f"http://127.0.0.1:{port}"
  log_path = workdir / "server.log"
  rng = np.random.default_rng(7)
  bodies = [{"history": [str(i) for i in row], "k": K}
            for row in zipf_items(rng, ML1M_ITEMS, (512, max_len))]
  out = {"max_len": max_len, "num_items": ML1M_ITEMS, "command": cmd, "client": args.http_client,
         "rates": {}}
  seconds = args.http_seconds or plan.http_seconds
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
      out["seconds_to_healthy"] = wait_healthy(proc, url, args.http_startup_timeout)
      progress(f"  healthy after {out['seconds_to_healthy']:.1f}s on {url}; warming up")
      warm = asyncio.run(open_loop(url, bodies, rate=20, seconds=2.0, max_in_flight=4, timeout=60,
                                   client=args.http_client))
      out["warmup"] = {k: warm[k] for k in ("sent", "ok", "errors", "error_kinds")}
      if warm["ok"] == 0:
        raise RuntimeError(f"no warm-up request succeeded ({warm['error_kinds']})")
      for rate in plan.http_rates:
        row = timed_load(proc, lambda: asyncio.run(open_loop(
            url, bodies, rate=rate, seconds=seconds, max_in_flight=args.http_max_in_flight,
            timeout=args.http_request_timeout, client=args.http_client)))
        out["rates"][str(rate)] = row
        latency = (f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"
                   if row["ok"] else "no successful request")
        cpu = (f"; CPU cores: server {row['server_cpu_cores']:.2f}, client "
               f"{row['client_cpu_cores']:.2f}" if "server_cpu_cores" in row else "")
        progress(f"  {rate} req/s: achieved {row['achieved_rate']:.1f}/s, {latency}, "
                 f"{row['errors']} errors {row['error_kinds'] or ''}{cpu}")
        others = row["contention"]["other_busy_cores"]
        if others is not None and others > 0.2:
          progress(f"  warning: other processes kept {others:.2f} cores busy meanwhile")
    except Exception:
      progress("  the server's log ends:\n    " + "\n    ".join(log_tail(log_path)))
      raise
    finally:
      stop_server(proc)
      shutil.rmtree(path, ignore_errors=True)
  out["server_log_tail"] = log_tail(log_path)
  return out


def log_tail(path: pathlib.Path, lines: int = 20) -> list[str]:
  try:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
  except OSError:
    return []


def stop_server(proc: subprocess.Popen) -> None:
  if proc.poll() is not None:
    return
  proc.send_signal(signal.SIGTERM)
  try:
    proc.wait(timeout=15)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait(timeout=15)


# ------------------------------------------------------------ 4. RecBole

def recbole(plan: Plan, args, python: pathlib.Path) -> dict:
  out = {}
  for policy in plan.recbole_omp_wait_policies:
    progress(f"[4] RecBole 1.2.1 SASRec, {ML1M_ITEMS:,} items, L={','.join(map(str, plan.lengths))}, "
             f"OMP wait policy {policy}")
    result_path = RESULTS / f"recbole_serving_{policy}.json"
    log_path = RESULTS / f"recbole_serving_{policy}.log"
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="recbole_serving_"))
    cmd = [str(python), str(BENCH / "recbole_serving_side.py"), "--workdir", str(workdir),
           "--out", str(result_path), "--threads", str(THREADS), "--num-items", str(ML1M_ITEMS),
           "--max-lens", *map(str, plan.lengths), "--batch-size", str(max(plan.batch_sizes)),
           "--k", str(K), "--warmup", str(plan.warmup), "--latency-calls", str(plan.latency_calls),
           "--batch-calls", str(plan.batch_calls)]

    def run():
      with open(log_path, "w", encoding="utf-8") as sink:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=_child_env(policy))
        for line in proc.stdout:
          sink.write(line)
          if line.startswith("[recbole_serving_side]"):
            progress("  recbole " + line.removeprefix("[recbole_serving_side]").strip())
        if proc.wait():
          tail = "".join(log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-30:])
          raise RuntimeError(f"recbole_serving_side.py exited {proc.returncode}; see {log_path}\n{tail}")
      return json.loads(result_path.read_text(encoding="utf-8"))

    try:
      out[policy] = with_contention(f"[4] RecBole OMP {policy}", run)
    finally:
      shutil.rmtree(workdir, ignore_errors=True)
    out[policy]["omp_wait_policy"] = policy
  return out


def side_by_side(report: dict) -> dict:
  """Per L: our and RecBole's batch-1 p50 and batch-B users/s; RecBole gets its better OMP policy."""
  ours, theirs = report.get("in_process", {}), report.get("recbole", {})
  rows = {}
  for key, row in ours.items():
    if row["num_items"] != ML1M_ITEMS:
      continue
    runs = [r["lengths"][str(row["max_len"])] for r in theirs.values()
            if str(row["max_len"]) in r.get("lengths", {})]
    if not runs:
      continue
    batch = str(max(int(b) for b in row["batches"]))
    best_latency = min(runs, key=lambda r: r["batch1"]["p50_ms"])
    best_batch = max(runs, key=lambda r: r["batch"]["users_per_second"])
    rows[f"L{row['max_len']}"] = {
        "batch_size": int(batch),
        "ours_p50_ms": row["batch1"]["p50_ms"], "recbole_p50_ms": best_latency["batch1"]["p50_ms"],
        "latency_speedup": best_latency["batch1"]["p50_ms"] / row["batch1"]["p50_ms"],
        "ours_users_per_second": row["batches"][batch]["users_per_second"],
        "recbole_users_per_second": best_batch["batch"]["users_per_second"],
        "throughput_speedup": (row["batches"][batch]["users_per_second"]
                               / best_batch["batch"]["users_per_second"]),
        "recbole_model_only_p50_ms": best_latency.get("model_only_batch1", {}).get("p50_ms")}
  return rows


# ------------------------------------------------------------ report

def verdict(ok: bool | None) -> str:
  return "-" if ok is None else ("pass" if ok else "FAIL")


def print_summary(report: dict) -> None:
  machine = report["machine"]
  print(f"\n=== recattn_jax serving, SASRec 64 wide / 2 layers / 2 heads / FFN 256, "
        f"{machine['backend']} ({machine['cpu_count']} cores, jax {machine['jax_version']}), "
        f"{report['mode']} run ===")
  for name in ("in_process", "sessions", "http", "recbole"):
    if "error" in (report.get(name) or {}):
      print(f"\n{name}: FAILED ({report[name]['error']})")
  rows = ok_section(report, "in_process")
  if rows:
    print("\n[1] in-process Recommender.recommend(k=10)")
    print(f"{'items':>10}{'L':>6}{'b1 p50 ms':>11}{'b1 p99 ms':>11}{'scorer ms':>11}"
          + "".join(f"{'b' + b + ' users/s':>15}" for b in next(iter(rows.values()))["batches"])
          + f"{'target p50':>12}{'':>6}")
    for row in rows.values():
      target = None
      if row["num_items"] == MILLION:
        target = TARGETS["p50_ms_batch1_1M"]
      elif row["max_len"] == 200:
        target = TARGETS["p50_ms_batch1_L200_3706"]
      kernel = row["kernel_batch1_median_ms"]
      line = (f"{row['num_items']:>10,}{row['max_len']:>6}{row['batch1']['p50_ms']:>11.2f}"
              f"{row['batch1']['p99_ms']:>11.2f}{'-' if kernel is None else f'{kernel:.2f}':>11}"
              + "".join(f"{r['users_per_second']:>15.0f}" for r in row["batches"].values()))
      if target is None:
        line += f"{'-':>12}{'':>6}"
      else:
        line += f"{'< ' + format(target, 'g') + ' ms':>12}{verdict(row['batch1']['p50_ms'] < target):>6}"
      print(line)
    print("  scorer ms: the jitted encoder + top-K alone on a pre-built batch (median); the rest of "
          "b1 p50 is per-call Python overhead")
  rows = ok_section(report, "sessions")
  if rows:
    print("\n[2] session append + recommend(10) per event, 3,706 items, session of ~L/2 events (p50 ms)")
    print(f"{'L':>6}{'cached':>9}{'append':>9}{'recommend':>11}{'recomputed':>12}{'speedup':>9}"
          f"{'target':>9}{'':>6}")
    for row in rows.values():
      cached, recomputed = row["cached"], row["recomputed"]
      target = TARGETS["session_cache_speedup_L1000"] if row["max_len"] == 1000 else None
      line = (f"{row['max_len']:>6}{cached['append_and_recommend']['p50_ms']:>9.2f}"
              f"{cached['append']['p50_ms']:>9.2f}{cached['recommend']['p50_ms']:>11.2f}"
              f"{recomputed['append_and_recommend']['p50_ms']:>12.2f}{row['speedup_p50']:>8.1f}x")
      line += (f"{'-':>9}{'':>6}" if target is None else
               f"{'>= ' + format(target, 'g') + 'x':>9}{verdict(row['speedup_p50'] >= target):>6}")
      print(line)
    print("  append: the call alone (bookkeeping; the cache is extended together with the next recommend)")
  section = ok_section(report, "http")
  if section:
    print(f"\n[3] HTTP POST /recommend (python -m recattn_jax.serve, 3,706 items, "
          f"L={section.get('max_len', '-')}, open loop, {section.get('client', '-')} client)")
    if "skipped" in section:
      print(f"  skipped: {section['skipped']}")
    else:
      print(f"{'target/s':>9}{'achieved/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
            f"{'server CPU ms/req':>19}{'target':>24}{'':>6}")
      for rate, row in section["rates"].items():
        p50 = f"{row['p50_ms']:.1f}" if row["ok"] else "-"
        p99 = f"{row['p99_ms']:.1f}" if row["ok"] else "-"
        cpu = row.get("server_cpu_ms_per_request")
        line = (f"{rate:>9}{row['achieved_rate']:>12.1f}{p50:>9}{p99:>9}{row['errors']:>8}"
                f"{'-' if cpu is None else f'{cpu:.1f}':>19}")
        if rate == "100":  # the target rate
          ok = row["errors"] == 0 and row["ok"] > 0 and row["p99_ms"] < TARGETS["http_p99_ms_at_100rps"]
          line += f"{'0 errors, p99 < 50 ms':>24}{verdict(ok):>6}"
        print(line)
  rows = report.get("side_by_side")
  if rows:
    target = TARGETS["recbole_speedup"]
    print(f"\n[4] vs RecBole 1.2.1 SASRec (same sizes, 3,706 items; RecBole: full_sort_topk, "
          f"torch {THREADS} threads, eval, no_grad)")
    print(f"{'L':>6}{'ours b1 p50':>13}{'RecBole':>10}{'ratio':>8}{'':>6}"
          f"{'ours users/s':>14}{'RecBole':>10}{'ratio':>8}{'':>6}  (target >= {target:g}x)")
    for name, row in rows.items():
      print(f"{name[1:]:>6}{row['ours_p50_ms']:>10.2f} ms{row['recbole_p50_ms']:>7.2f} ms"
            f"{row['latency_speedup']:>7.1f}x{verdict(row['latency_speedup'] >= target):>6}"
            f"{row['ours_users_per_second']:>14.0f}{row['recbole_users_per_second']:>10.0f}"
            f"{row['throughput_speedup']:>7.1f}x{verdict(row['throughput_speedup'] >= target):>6}"
            f"  (batch {row['batch_size']})")
  elif ok_section(report, "recbole"):
    print("\n[4] RecBole: no comparable rows")
  busy = [(name, r["contention"]["other_busy_cores"]) for name, r in contention_rows(report)
          if (r.get("contention") or {}).get("other_busy_cores") not in (None,)
          and r["contention"]["other_busy_cores"] > 0.2]
  if busy:
    print("\nwarning: other processes used the cores during: "
          + ", ".join(f"{n} ({b:.2f} cores)" for n, b in busy))


def ok_section(report: dict, name: str) -> dict:
  """report[name] unless it is missing or failed ({"error": ...})."""
  section = report.get(name) or {}
  return {} if "error" in section else section


def contention_rows(report: dict):
  for section in ("in_process", "sessions", "recbole"):
    for name, row in ok_section(report, section).items():
      yield f"{section} {name}", row
  for name, row in (ok_section(report, "http").get("rates") or {}).items():
    yield f"http {name}/s", row


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true",
                      help="fewer repetitions, HTTP 5 s per rate, 1M items with few calls")
  parser.add_argument("--skip-recbole", action="store_true")
  parser.add_argument("--skip-http", action="store_true")
  parser.add_argument("--skip-million", action="store_true", help="no 1,000,000-item catalogue")
  parser.add_argument("--skip-in-process", action="store_true", help="no section 1")
  parser.add_argument("--skip-sessions", action="store_true", help="no section 2")
  parser.add_argument("--http-seconds", type=float, default=0.0,
                      help="seconds per request rate (default 30, --quick 5)")
  parser.add_argument("--http-max-len", type=int, default=50, choices=(50, 200))
  parser.add_argument("--http-max-in-flight", type=int, default=64,
                      help="outstanding requests at most (the generator's bound)")
  parser.add_argument("--http-request-timeout", type=float, default=10.0)
  parser.add_argument("--http-client", default="raw", choices=sorted(CLIENTS),
                      help="raw: a minimal asyncio HTTP/1.1 client (little CPU); httpx.AsyncClient")
  parser.add_argument("--http-startup-timeout", type=float, default=180.0)
  parser.add_argument("--recbole-venv", type=pathlib.Path, default=DEFAULT_VENV)
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "serving_cpu.json")
  return parser.parse_args(argv)


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  plan = QUICK if args.quick else FULL
  RESULTS.mkdir(parents=True, exist_ok=True)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  python = None
  if not args.skip_recbole:  # first, so a broken venv fails the run before the long sections
    start = time.perf_counter()
    python = ensure_recbole_venv(args.recbole_venv)
    progress(f"RecBole venv ready ({time.perf_counter() - start:.0f}s): {python}")

  import jax

  report = {"mode": "quick" if args.quick else "full", "plan": dataclasses.asdict(plan),
            "targets": TARGETS, "model": {"name": "sasrec", "positions": "start", **MODEL}, "k": K,
            "machine": {**machine_info(), "jax_version": jax.__version__,
                        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
  failed = []

  def section(name: str, fn) -> None:
    """Runs one section into report[name]; a failure is recorded and the others still run."""
    try:
      report[name] = fn()
    except Exception as e:  # noqa: BLE001 - reported, and the exit status says so
      progress(f"section {name} failed: {type(e).__name__}: {e}")
      report[name] = {"error": f"{type(e).__name__}: {e}"}
      failed.append(name)
    write_json(args.out, report)

  with tempfile.TemporaryDirectory(prefix="serving_bench_") as tmp:
    workdir = pathlib.Path(tmp)
    if not args.skip_in_process:
      section("in_process", lambda: in_process(plan, args, workdir))
    if not args.skip_sessions:
      section("sessions", lambda: sessions(plan, workdir))
    if not args.skip_http:
      section("http", lambda: http(plan, args, workdir))
  if python is not None:
    section("recbole", lambda: recbole(plan, args, python))
    if "error" not in report["recbole"] and "error" not in report.get("in_process", {}):
      report["side_by_side"] = side_by_side(report)
  report["machine"]["load_average_at_end"] = os.getloadavg()
  report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
  write_json(args.out, report)
  print_summary(report)
  print(f"\nwrote {args.out}")
  if failed:
    print(f"failed sections: {', '.join(failed)}")
    sys.exit(1)


if __name__ == "__main__":
  main(sys.argv[1:])
