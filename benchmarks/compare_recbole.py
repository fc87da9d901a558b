"""recattn_jax's SASRec against RecBole 1.2.1's SASRec (PyTorch, CPU), in one run on this machine.

  .venv/bin/python benchmarks/compare_recbole.py            # full: RecBole early-stops (~30+ min)
  .venv/bin/python benchmarks/compare_recbole.py --quick    # RecBole capped at 2 epochs (~10-20 min)

Two numbers (see benchmarks/README.md for exactly what each side's clock covers):
  (a) convergence: wall-clock seconds until our validation NDCG@10 first reaches
      RecBole's best validation NDCG@10, against RecBole's seconds to its best
      epoch; both test NDCG@10 are reported;
  (b) throughput: training target events per second of forward + backward +
      optimiser step on identical [B, L] batches through the same layer sizes,
      with CE over the full catalogue at each sequence's last position.

RecBole runs in its own Python 3.11 venv (created here on first use) through
`benchmarks/recbole_side.py`; our side runs in this interpreter.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import logging
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
DEFAULT_VENV = BENCH / ".recbole-venv"
DATA_ROOT = REPO.parent / "shared" / "data"
DATASET = "ml-100k"
MAX_LEN = 50
THREADS = 2
# Order matters: the local CPU torch wheel must be in place before recbole's
# unpinned `torch` requirement could pull a CUDA build, and ray 2.6.3 (a recbole
# dependency) still needs pkg_resources and np.bool8.
RECBOLE_INSTALL_STEPS = (("torch==2.13.0",), ("recbole==1.2.1",),
                         ("setuptools<81", "numpy<2", "pandas<3"))
RECBOLE_CHECK = ("import recbole, torch, numpy, pkg_resources; "
                 "assert recbole.__version__ == '1.2.1', recbole.__version__; "
                 "assert torch.__version__.startswith('2.13.0'), torch.__version__; "
                 "assert int(numpy.__version__.split('.')[0]) < 2, numpy.__version__")
TARGETS = {"convergence_speedup": 10.0, "throughput_speedup": 2.0}
# Torch's OpenMP threads spin while waiting: best on idle cores, ruinous once
# anything else wants one (a B=256 step 7x slower). Both are tried in (b).
OMP_WAIT_POLICIES = ("default", "PASSIVE")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything that differs between --quick and the full run."""

  recbole_epochs: int
  recbole_stopping_step: int
  our_epochs: int
  our_patience: int
  batch_sizes: tuple[int, ...]
  warmup_steps: int
  timed_steps: int


FULL = Plan(recbole_epochs=40, recbole_stopping_step=5, our_epochs=200, our_patience=10,
            batch_sizes=(256, 2048), warmup_steps=5, timed_steps=20)
QUICK = Plan(recbole_epochs=2, recbole_stopping_step=5, our_epochs=20, our_patience=5,
             batch_sizes=(256,), warmup_steps=3, timed_steps=10)


# ---------------------------------------------------------------- RecBole's venv

def _python_version(python: str) -> tuple[int, int] | None:
  try:
    out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  major, minor = out.split()
  return int(major), int(minor)


def find_python311(env_var: str = "RECBOLE_PYTHON", why: str = "RecBole 1.2.1 needs it here "
                   "(its torch wheel is cp311)") -> str:
  """A Python 3.11 interpreter: $`env_var`, python3.11 on PATH, or a pyenv install."""
  pyenv_root = os.environ.get("PYENV_ROOT", str(pathlib.Path.home() / ".pyenv"))
  candidates = [os.environ.get(env_var), shutil.which("python3.11"),
                *sorted(glob.glob(f"{pyenv_root}/versions/3.11*/bin/python3"), reverse=True),
                shutil.which("python3")]
  for candidate in filter(None, candidates):
    if _python_version(candidate) == (3, 11):
      return candidate
  raise RuntimeError(f"no Python 3.11 found: {why}; set {env_var} to a 3.11 interpreter")


def ensure_venv(venv: pathlib.Path, *, install_steps, check: str, env: dict[str, str],
                python311: Callable[[], str], label: str) -> pathlib.Path:
  """A side venv's interpreter; creates or repairs the venv only when `check` fails in it."""
  python = venv / "bin" / "python"

  def ready() -> bool:
    return python.exists() and subprocess.run(
        [str(python), "-c", check], capture_output=True, text=True, env=env,
        timeout=300).returncode == 0

  if ready():
    return python
  if not python.exists():
    base = python311()
    print(f"creating the {label} venv at {venv} from {base}", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
  for packages in install_steps:
    print(f"pip install {' '.join(packages)} (into {venv})", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", *packages], check=True, env=env)
  if not ready():
    raise RuntimeError(f"{venv} still fails the check: {check}")
  return python


def ensure_recbole_venv(venv: pathlib.Path) -> pathlib.Path:
  """RecBole's interpreter; creates or repairs the venv only when the version check fails."""
  return ensure_venv(venv, install_steps=RECBOLE_INSTALL_STEPS, check=RECBOLE_CHECK,
                     env=_child_env(), python311=find_python311, label="RecBole")


def _child_env(omp_wait_policy: str = "default") -> dict[str, str]:
  dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "OMP_WAIT_POLICY")
  env = {k: v for k, v in os.environ.items() if k not in dropped}
  env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
  env["PYTHONUNBUFFERED"] = "1"  # RecBole's per-epoch lines should reach the log as they happen
  if omp_wait_policy != "default":
    env["OMP_WAIT_POLICY"] = omp_wait_policy
  return env


def run_recbole_side(python: pathlib.Path, mode: str, out: pathlib.Path, log_path: pathlib.Path,
                     *extra: str, omp_wait_policy: str = "default") -> dict:
  """Runs recbole_side.py, teeing its output to `log_path` and echoing its progress lines.

  `omp_wait_policy` "default" leaves OpenMP's (spinning) wait policy alone.
  """
  workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"recbole_{mode}_"))
  cmd = [str(python), str(BENCH / "recbole_side.py"), mode, "--data-root", str(DATA_ROOT),
         "--dataset", DATASET, "--workdir", str(workdir), "--out", str(out),
         "--threads", str(THREADS), "--max-len", str(MAX_LEN), *extra]
  try:
    with open(log_path, "w", encoding="utf-8") as sink:
      proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_child_env(omp_wait_policy))
      for line in proc.stdout:
        sink.write(line)
        if line.startswith("[recbole_side]"):
          print("  recbole " + line.removeprefix("[recbole_side]").strip(), flush=True)
      if proc.wait():
        tail = "".join(log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"recbole_side.py {mode} exited {proc.returncode}; see {log_path}\n{tail}")
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  result = json.loads(out.read_text(encoding="utf-8"))
  result["omp_wait_policy"] = omp_wait_policy
  return result


# ------------------------------------------------------------ identical batches

def catalogue_size(inter_path: pathlib.Path) -> int:
  items = np.loadtxt(inter_path, dtype=str, delimiter="\t", skiprows=1, usecols=1)
  return len(np.unique(items))


def recbole_sample_lengths(inter_path: pathlib.Path, max_len: int) -> np.ndarray:
  """Input lengths of RecBole's training samples: every prefix of each user's training events.

  A user with n events keeps n - 2 for training (leave-one-out) and yields
  samples whose inputs are its first 1 .. n - 3 events, clipped to `max_len`.
  """
  users = np.loadtxt(inter_path, dtype=np.int64, delimiter="\t", skiprows=1, usecols=0)
  counts = np.unique(users, return_counts=True)[1]
  return np.concatenate([np.minimum(np.arange(1, n - 2), max_len) for n in counts if n > 3])


def make_batches(path: pathlib.Path, *, lengths_pool: np.ndarray, batch_size: int, count: int,
                 num_items: int, max_len: int, seed: int) -> dict[str, np.ndarray]:
  """`count` right-padded batches (RecBole's layout) with lengths drawn from `lengths_pool`."""
  rng = np.random.default_rng(seed)
  lengths = rng.choice(lengths_pool, size=(count, batch_size)).astype(np.int32)
  items = rng.integers(1, num_items + 1, size=(count, batch_size, max_len), dtype=np.int32)
  items[np.arange(max_len) >= lengths[..., None]] = 0
  targets = rng.integers(1, num_items + 1, size=(count, batch_size), dtype=np.int32)
  np.savez(path, items=items, lengths=lengths, targets=targets)
  return {"items": items, "lengths": lengths, "targets": targets}


# ----------------------------------------------------------------- our side

def our_step_benchmark(batches: dict[str, np.ndarray], *, num_items: int, warmup: int,
                       dropout: float, seed: int = 0) -> dict:
  """Our SASRec, last-position full-catalogue CE, AdamW without decay (= torch Adam), donated state."""
  import jax
  import jax.numpy as jnp
  import optax

  from recattn_jax.models import SASRec, catalogue_logits, last_hidden

  batch_size, max_len = batches["items"].shape[1:]
  model = SASRec(num_items=num_items, max_len=max_len, embed_dim=64, num_layers=2, num_heads=2,
                 ff_dim=256, dropout_rate=dropout)
  # torch.optim.Adam's defaults, so both sides run the same optimiser arithmetic.
  optimizer = optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(init_key, jnp.zeros((1, max_len), jnp.int32))
  state = (params, optimizer.init(params), dropout_key)

  def loss_fn(params, items, targets, key):
    hidden = model.apply(params, items, deterministic=False, rngs={"dropout": key})
    logits = catalogue_logits(last_hidden(hidden, items), model.apply(params, method="item_embeddings"))
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, items, targets):
    params, opt_state, key = state
    key, step_key = jax.random.split(key)
    loss, grads = jax.value_and_grad(loss_fn)(params, items, targets, step_key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, key), loss

  device_batches = [(jax.device_put(i), jax.device_put(t))
                    for i, t in zip(batches["items"], batches["targets"])]
  seconds, cpu_seconds, losses = [], [], []
  for items, targets in device_batches:
    start, cpu_start = time.perf_counter(), time.process_time()
    state, loss = train_step(state, items, targets)
    losses.append(float(loss))  # blocks until the step is done, like RecBole's loss.item()
    seconds.append(time.perf_counter() - start)
    cpu_seconds.append(time.process_time() - cpu_start)
  timed = seconds[warmup:]
  median = statistics.median(timed)
  return {"batch_size": int(batch_size), "max_len": int(max_len), "warmup_steps": warmup,
          "timed_steps": len(timed), "step_seconds": timed, "median_step_seconds": median,
          "events_per_second": batch_size / median, "first_step_seconds_with_compile": seconds[0],
          "median_step_cpu_seconds": statistics.median(cpu_seconds[warmup:]),
          "first_loss": losses[0], "last_loss": losses[-1], "jax_version": jax.__version__,
          "devices": [str(d) for d in jax.devices()]}


def our_training(plan: Plan, args: argparse.Namespace, log_path: pathlib.Path) -> dict:
  """`train_and_evaluate` in a fresh workdir (it resumes from an existing one)."""
  from recattn_jax.config import get_default_config
  from recattn_jax.training.loop import train_and_evaluate
  from recattn_jax.training.metric_writer import read_metrics

  config = get_default_config()
  config.data.path = str(DATA_ROOT / DATASET)
  config.data.format = "recbole"
  config.data.max_len = MAX_LEN
  config.model.sasrec.update(embed_dim=64, num_layers=2, num_heads=2, ff_dim=256,
                             dropout_rate=args.our_dropout)
  config.train.batch_size = args.our_batch_size
  config.train.num_epochs = args.our_epochs or plan.our_epochs
  config.train.patience = args.our_patience or plan.our_patience
  config.train.eval_every_epochs = 1
  config.train.progress_bar = False
  config.eval.ks = (10,)

  # The file gets recattn_jax's progress and everyone's warnings (orbax's INFO
  # chatter runs to hundreds of KB); the console keeps warnings only.
  handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
  handler.addFilter(lambda r: r.name.startswith("recattn_jax") or r.levelno >= logging.WARNING)
  handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
  root = logging.getLogger()
  root.addHandler(handler)
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="ours_train_"))
  try:
    results = train_and_evaluate(config, workdir)
    records = read_metrics(workdir)
    shutil.copy(workdir / "metrics.jsonl", RESULTS / "ours_metrics.jsonl")
  finally:
    root.removeHandler(handler)
    handler.close()
    shutil.rmtree(workdir, ignore_errors=True)
  valid = [{"epoch": r["epoch"], "step": r["step"], "cumulative_seconds": r["train_seconds"],
            "valid_ndcg@10": r["NDCG@10"]} for r in records if r["split"] == "valid"]
  return {"evaluations": valid, "best_step": results["best_step"],
          "best_epoch": results["best_epoch"], "train_seconds": results["train_seconds"],
          "best_valid": results["valid"]["seen_excluded"], "test": results["test"]["seen_excluded"],
          "test_all_items": results["test"]["all_items"], "data": results["data"],
          "config": {"batch_size": config.train.batch_size, "dropout": config.model.sasrec.dropout_rate,
                     "num_epochs": config.train.num_epochs, "patience": config.train.patience,
                     "max_len": config.data.max_len, "attention_impl": config.model.sasrec.attention_impl}}


def first_reaching(evaluations: list[dict], target: float) -> dict | None:
  return next((e for e in evaluations if e["valid_ndcg@10"] >= target), None)


# -------------------------------------------------- other work on the cores

def _cpu_seconds() -> tuple[float, float] | None:
  """(busy CPU seconds of the whole machine, CPU seconds of this process and its children)."""
  try:
    jiffies = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
  except (OSError, ValueError):
    return None
  busy = (sum(jiffies[:8]) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")
  own = os.times()
  return busy, own.user + own.system + own.children_user + own.children_system


def other_busy_cores(window: float = 3.0) -> float | None:
  """Cores kept busy by other processes over `window` seconds while this one sleeps."""
  start = _cpu_seconds()
  time.sleep(window)
  end = _cpu_seconds()
  if not (start and end):
    return None
  return max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / window


def wait_for_quiet(phase: str, max_wait: float, threshold: float = 0.2) -> None:
  """Waits up to `max_wait` seconds for other processes to leave the cores alone."""
  deadline = time.monotonic() + max_wait
  announced = False
  while time.monotonic() < deadline:
    busy = other_busy_cores()
    if busy is None or busy < threshold:
      return
    if not announced:
      print(f"  waiting up to {max_wait:.0f}s before {phase}: others keep {busy:.2f} cores busy",
            flush=True)
      announced = True
  print(f"  gave up waiting for idle cores before {phase}", flush=True)


def with_contention(phase: str, fn: Callable[[], dict], *, wait_idle: float = 0.0) -> dict:
  """Runs `fn` and adds to its result how many cores *other* processes kept busy meanwhile.

  Both sides are timed on the same 2 cores; one busy neighbour halves what a
  side gets, and torch's OpenMP threads degrade far worse than that.
  """
  if wait_idle > 0:
    wait_for_quiet(phase, wait_idle)
  start, wall = _cpu_seconds(), time.perf_counter()
  result = fn()
  end, wall = _cpu_seconds(), time.perf_counter() - wall
  others = None
  if start and end:
    others = round(max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / wall, 2)
    if others > 0.2:
      print(f"  warning: other processes kept {others:.2f} of {os.cpu_count()} cores busy "
            f"during {phase}; its timings are distorted", flush=True)
  result["contention"] = {"other_busy_cores": others, "wall_seconds": wall,
                          "load_average_after": os.getloadavg()}
  return result


# ------------------------------------------------------------------ the run

def recbole_step_benchmark(python: pathlib.Path, npz: pathlib.Path, batch_size: int, policy: str,
                           plan: Plan, args: argparse.Namespace) -> dict:
  name = f"recbole_step_B{batch_size}_{policy}"
  return with_contention(
      f"(b) RecBole B={batch_size} OMP {policy}",
      lambda: run_recbole_side(python, "step", RESULTS / f"{name}.json", RESULTS / f"{name}.log",
                               "--batches", str(npz), "--warmup", str(plan.warmup_steps),
                               omp_wait_policy=policy),
      wait_idle=args.wait_idle)


def throughput(plan: Plan, python: pathlib.Path, args: argparse.Namespace, num_items: int) -> dict:
  pool = recbole_sample_lengths(DATA_ROOT / DATASET / f"{DATASET}.inter", MAX_LEN)
  out = {}
  for batch_size in args.batch_sizes or plan.batch_sizes:
    print(f"(b) throughput, B={batch_size}, L={MAX_LEN}", flush=True)
    npz = RESULTS / f"batches_B{batch_size}.npz"
    batches = make_batches(npz, lengths_pool=pool, batch_size=batch_size,
                           count=plan.warmup_steps + plan.timed_steps, num_items=num_items,
                           max_len=MAX_LEN, seed=batch_size)
    ours = with_contention(f"(b) ours B={batch_size}", lambda: our_step_benchmark(
        batches, num_items=num_items, warmup=plan.warmup_steps, dropout=args.our_dropout),
        wait_idle=args.wait_idle)
    print(f"  ours    {ours['median_step_seconds'] * 1e3:8.1f} ms/step  "
          f"{ours['events_per_second']:10.0f} events/s", flush=True)
    by_policy = {}
    for policy in OMP_WAIT_POLICIES:
      by_policy[policy] = recbole_step_benchmark(python, npz, batch_size, policy, plan, args)
      print(f"  recbole {by_policy[policy]['median_step_seconds'] * 1e3:8.1f} ms/step  "
            f"{by_policy[policy]['events_per_second']:10.0f} events/s  (OMP wait policy: {policy})",
            flush=True)
    npz.unlink()  # regenerated from the seed on every run; no need to keep megabytes around
    # RecBole is credited with whichever OpenMP setting served it better.
    theirs = max(by_policy.values(), key=lambda r: r["events_per_second"])
    out[str(batch_size)] = {
        "ours": ours, "recbole": theirs, "recbole_by_omp_wait_policy": by_policy,
        "speedup": ours["events_per_second"] / theirs["events_per_second"]}
  return out


def training_omp_policy(requested: str, throughput_rows: dict | None) -> str:
  """"auto": the policy that won (b) at the largest batch size; torch's default without (b)."""
  if requested != "auto":
    return requested
  if not throughput_rows:
    return "default"
  largest = throughput_rows[max(throughput_rows, key=int)]
  return largest["recbole"]["omp_wait_policy"]


def convergence(plan: Plan, python: pathlib.Path, args: argparse.Namespace,
                throughput_rows: dict | None) -> dict:
  epochs = args.recbole_epochs or plan.recbole_epochs
  policy = training_omp_policy(args.recbole_omp_wait_policy, throughput_rows)
  print(f"(a) convergence: RecBole SASRec, up to {epochs} epochs "
        f"(early stopping after {plan.recbole_stopping_step} without improvement), "
        f"OMP wait policy {policy}", flush=True)
  theirs = with_contention("(a) RecBole", lambda: run_recbole_side(
      python, "train", RESULTS / "recbole_train.json", RESULTS / "recbole_train.log",
      "--epochs", str(epochs), "--stopping-step", str(plan.recbole_stopping_step),
      omp_wait_policy=policy), wait_idle=args.wait_idle)
  target = theirs["best_valid_ndcg@10"]
  print(f"  recbole best valid NDCG@10 {target:.4f} at epoch {theirs['best_epoch']}, "
        f"{theirs['seconds_to_best']:.1f}s", flush=True)
  print("(a) convergence: recattn_jax SASRec", flush=True)
  ours = with_contention("(a) ours", lambda: our_training(plan, args, RESULTS / "ours_train.log"),
                         wait_idle=args.wait_idle)
  reached = first_reaching(ours["evaluations"], target)
  ours["seconds_to_target"] = reached and reached["cumulative_seconds"]
  ours["epoch_at_target"] = reached and reached["epoch"]
  return {"target_valid_ndcg@10": target, "recbole": theirs, "ours": ours,
          "speedup": reached and theirs["seconds_to_best"] / reached["cumulative_seconds"]}


def machine_info() -> dict:
  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
          "python": platform.python_version(),
          "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                           if k in os.environ}}


def _others(result: dict) -> str:
  busy = result.get("contention", {}).get("other_busy_cores")
  return "" if busy is None else f"  [other processes: {busy:.2f} cores busy]"


def print_summary(report: dict) -> None:
  print(f"\n=== recattn_jax vs RecBole 1.2.1 SASRec (ML-100K, L=50, CPU), {report['mode']} run ===")
  if report["mode"] == "quick":
    print("(quick: RecBole stops after 2 epochs, so (a)'s target is far below its converged quality)")
  conv = report.get("convergence")
  if conv:
    ours, theirs = conv["ours"], conv["recbole"]
    print(f"(a) target = RecBole's best valid NDCG@10 {conv['target_valid_ndcg@10']:.4f} "
          f"(epoch {theirs['best_epoch']} of {len(theirs['epochs'])})")
    print(f"    RecBole reached it after {theirs['seconds_to_best']:.1f}s "
          f"({theirs['train_seconds_to_best']:.1f}s of it in training epochs; "
          f"OMP wait policy {theirs['omp_wait_policy']}){_others(theirs)}")
    if ours["seconds_to_target"] is None:
      best = max(e["valid_ndcg@10"] for e in ours["evaluations"])
      print(f"    ours never reached it (best valid NDCG@10 {best:.4f}); no ratio")
    else:
      print(f"    ours reached it after {ours['seconds_to_target']:.1f}s "
            f"(epoch {ours['epoch_at_target']:g}){_others(ours)}")
      print(f"    time-to-quality speedup: {conv['speedup']:.1f}x "
            f"(target >= {TARGETS['convergence_speedup']:g}x)")
    print(f"    test NDCG@10: ours {ours['test']['NDCG@10']:.4f}  RecBole {theirs['test']['ndcg@10']:.4f}"
          f"   HR@10: ours {ours['test']['HR@10']:.4f}  RecBole {theirs['test']['hit@10']:.4f}")
  for batch_size, row in report.get("throughput", {}).items():
    print(f"(b) B={batch_size}: ours {row['ours']['events_per_second']:.0f} events/s, "
          f"RecBole {row['recbole']['events_per_second']:.0f} events/s "
          f"(OMP wait policy {row['recbole']['omp_wait_policy']}) -> {row['speedup']:.2f}x "
          f"(target >= {TARGETS['throughput_speedup']:g}x)")
    print(f"    ours{_others(row['ours'])}  RecBole{_others(row['recbole'])}")


def write_json(path: pathlib.Path, payload: dict) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
  os.replace(tmp, path)


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="RecBole capped at 2 epochs, B=256 only")
  parser.add_argument("--skip-convergence", action="store_true", help="only (b)")
  parser.add_argument("--skip-throughput", action="store_true", help="only (a)")
  parser.add_argument("--recbole-venv", type=pathlib.Path, default=DEFAULT_VENV)
  parser.add_argument("--recbole-epochs", type=int, default=0, help="override the mode's cap")
  parser.add_argument("--batch-sizes", type=int, nargs="+", help="override the mode's (b) batch sizes")
  parser.add_argument("--our-batch-size", type=int, default=128)
  parser.add_argument("--our-dropout", type=float, default=0.5,
                      help="RecBole's SASRec default is 0.5 (hidden and attention)")
  parser.add_argument("--our-epochs", type=int, default=0, help="override the mode's cap")
  parser.add_argument("--our-patience", type=int, default=0, help="override the mode's patience")
  parser.add_argument("--recbole-omp-wait-policy", default="auto",
                      choices=("auto", *OMP_WAIT_POLICIES, "ACTIVE"),
                      help="OMP_WAIT_POLICY for RecBole's training run; auto: the one that won (b)")
  parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                      help="before each timed phase, wait up to this long for other processes "
                           "to stop using the cores")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "recbole_compare.json")
  return parser.parse_args(argv)


def main(argv: list[str]) -> None:
  console = logging.StreamHandler()
  console.setLevel(logging.WARNING)
  console.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
  logging.basicConfig(level=logging.INFO, handlers=[console])
  args = parse_args(argv)
  plan = QUICK if args.quick else FULL
  RESULTS.mkdir(parents=True, exist_ok=True)
  if not (DATA_ROOT / DATASET / f"{DATASET}.inter").exists():
    raise FileNotFoundError(f"{DATA_ROOT / DATASET}/{DATASET}.inter is missing")
  python = ensure_recbole_venv(args.recbole_venv)
  report = {"mode": "quick" if args.quick else "full", "plan": dataclasses.asdict(plan),
            "targets": TARGETS, "machine": machine_info(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
  # Both tables add a padding row 0 to the catalogue (RecBole's has 1683 rows on ML-100K).
  num_items = catalogue_size(DATA_ROOT / DATASET / f"{DATASET}.inter")
  if not args.skip_throughput:
    report["throughput"] = throughput(plan, python, args, num_items)
    write_json(args.out, report)
  if not args.skip_convergence:
    report["convergence"] = convergence(plan, python, args, report.get("throughput"))
  report["machine"]["load_average_at_end"] = os.getloadavg()
  write_json(args.out, report)
  print_summary(report)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main(sys.argv[1:])
