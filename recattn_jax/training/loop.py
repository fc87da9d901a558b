"""`train_and_evaluate(config, workdir)`: the whole job, resumable from `workdir`.

The loop is shared by every task; what differs (data, model, loss and
evaluation) comes from `tasks.build_job`. What it guarantees (docs/reliability.md):
the config is checked before any work; one process at a time trains in a
workdir, and only the run the workdir holds is resumed; a non-finite loss or
gradient stops training (or, with `train.nan_policy="skip"`, is skipped and
counted); SIGTERM (a preemption notice) and SIGINT save the latest state and
stop; checkpoints are verified on restore.

On several processes (`parallel.initialize_distributed`) every process runs
this same function on its share of each batch; process 0 alone holds the
workdir lock and writes metrics, results and the bundle, while checkpoints are
written by all (Orbax) and sealed by process 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import signal
import threading
import time
from typing import Callable

import jax
import ml_collections
from tqdm import tqdm

from recattn_jax.config import check_config, get_default_config, size_aware_fields
from recattn_jax.parallel import DATA_AXIS, global_batch, is_primary, make_mesh
from recattn_jax.training.bundle import write_bundle
from recattn_jax.training.checkpoint import Checkpoints, Progress
from recattn_jax.training.metric_writer import MetricWriter
from recattn_jax.training.tasks import PROTOCOLS, Job, build_job, higher_is_better
from recattn_jax.training.workdir import RunIdentity, RunMismatchError, WorkdirLock, source_files

log = logging.getLogger(__name__)
BUNDLE_DIR = "bundle"  # in a workdir: the served model of the run (`training.bundle`)


class NonFiniteError(FloatingPointError):
  """Training diverged: a step's loss or gradient norm was NaN or infinite."""


class TrainingInterrupted(Exception):
  """SIGTERM or SIGINT stopped training after the latest state was saved."""

  def __init__(self, signum: int, step: int, workdir: pathlib.Path):
    self.signal_name = signal.Signals(signum).name
    # SIGTERM is how schedulers (Kubernetes, Slurm, Cloud TPU) announce a preemption: the state
    # is saved, so the job ends cleanly and its relaunch resumes. Ctrl-C reports as a shell would.
    self.exit_code = 0 if signum == signal.SIGTERM else 128 + signum
    self.step = step
    super().__init__(f"{self.signal_name}: saved the state of step {step} in {workdir}; "
                     "run the same command again to resume")


class DeadlineReached(Exception):
  """The run's `deadline` passed; the latest state was saved, so the run can resume later."""

  def __init__(self, step: int, workdir: pathlib.Path):
    self.step = step
    super().__init__(f"deadline reached: saved the state of step {step} in {workdir}")


def _write_text(path: pathlib.Path, text: str):
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def _write_json(path: pathlib.Path, payload: dict):
  _write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def format_table(results: dict, ks=None) -> str:
  """The test metrics of `results.json` as a text table (ranking: one column per K)."""
  test = results["test"]
  if ks is None or not set(PROTOCOLS.values()) <= set(test):
    return "\n".join(f"{protocol}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(row.items()))
                     for protocol, row in test.items())
  lines = [f"{'test metric':<26}" + "".join(f"{'@' + str(k):>9}" for k in ks)]
  for protocol in PROTOCOLS.values():
    for name in ("HR", "NDCG", "MRR"):
      row = test[protocol]
      lines.append(f"{name + ' (' + protocol + ')':<26}" + "".join(f"{row[f'{name}@{k}']:>9.4f}" for k in ks))
  return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       force_resume: bool = False, evaluate_test: bool = True,
                       on_evaluation: Callable[[float, dict], None] | None = None,
                       deadline: float | None = None) -> dict:
  """Trains until early stopping or `train.num_epochs`, then reports test metrics of the best model.

  Rerunning with the same `workdir` resumes from the latest intact checkpoint;
  a run that had finished only recomputes and rewrites the results. A workdir
  that holds a run of another config or other data is refused
  (`workdir.RunMismatchError`) unless `force_resume`.

  For model selection (`recattn_jax.tuning`): `evaluate_test=False` never
  touches the test split (results hold validation metrics only, and no bundle
  is written; a later call with True on the finished workdir adds them);
  `on_evaluation(epoch, valid_metrics)` is called after every validation,
  once the state is saved (whatever it raises stops the run and propagates);
  past `deadline` (a `time.time()`), the state is saved and DeadlineReached raised.

  Raises:
    ConfigError: a config field is out of range (before anything is read or written).
    WorkdirLockedError: another process trains in `workdir`.
    RunMismatchError: `workdir` holds another run.
    CheckpointError: no intact checkpoint to resume from, or the best one is damaged.
    NonFiniteError: the loss or gradient became non-finite (`train.nan_policy="raise"`).
    TrainingInterrupted: SIGTERM/SIGINT; the state was saved (`exit_code` 0/130).
    DeadlineReached: `deadline` passed; the state was saved.
  """
  check_config(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # One lock per run: on several hosts the first process speaks for all.
  lock = WorkdirLock(workdir) if is_primary() else contextlib.nullcontext()
  with lock:
    return _run(config, workdir, force_resume=force_resume, evaluate_test=evaluate_test,
                hooks=_Hooks(on_evaluation, deadline))


@dataclasses.dataclass(frozen=True)
class _Hooks:
  on_evaluation: Callable[[float, dict], None] | None = None
  deadline: float | None = None

  def past_deadline(self) -> bool:
    return self.deadline is not None and time.time() >= self.deadline


def _run(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, force_resume: bool,
         evaluate_test: bool, hooks: _Hooks) -> dict:
  mesh = make_mesh(config.train.mesh, config.train.num_devices)
  check_batch_sizes(config, mesh.shape[DATA_AXIS])

  job = build_job(config, mesh)
  log.info("data: %s", json.dumps(job.stats, default=str))
  if config.data.size_aware_for:
    log.info("sized for %s: %s", config.data.size_aware_for, size_aware_fields(config))
  checkpoints = Checkpoints(workdir, keep=config.train.keep_checkpoints)
  writer = None
  try:
    has_run = bool(checkpoints.latest.steps() or checkpoints.best.steps()
                   or (workdir / "results.json").exists())
    identity = RunIdentity(config, data_files=source_files(job.data_files),
                           data_digest=job.data_digest, data_stats=job.stats,
                           defaults=get_default_config())
    forced_changes = identity.check(workdir, has_run=has_run, force_resume=force_resume,
                                    step=checkpoints.latest_step() or 0, record=is_primary())
    progress = Progress()
    state = job.state
    restored = checkpoints.restore_latest(state, job.data_iter)
    if restored is not None:
      state, progress = restored
      log.info("resuming from step %d (finished=%s)", int(state.step), progress.finished)
    if is_primary():
      _write_text(workdir / "config.json", config.to_json_best_effort(indent=2))

    writer = MetricWriter(workdir, config, resume_step=int(state.step), enabled=is_primary())
    with _StopOnSignal() as stop:
      state = _train(state, progress, config=config, job=job, mesh=mesh, checkpoints=checkpoints,
                     writer=writer, stop=stop, workdir=workdir, hooks=hooks)
    best_params = checkpoints.restore_best(state.params, progress.best_step)
    results = _final_results(best_params, state, progress, config=config, job=job,
                             num_devices=mesh.size, evaluate_test=evaluate_test)
    if forced_changes:
      results["forced_changes"] = forced_changes
    if evaluate_test:
      writer.write(int(state.step), "test", results["test"][job.primary], protocol=job.primary)
  finally:
    if hasattr(job.data_iter, "close"):
      job.data_iter.close()
    if writer is not None:
      writer.close()
    checkpoints.close()
  if is_primary():
    _write_json(workdir / "results.json", results)
  if is_primary() and evaluate_test:
    write_bundle(workdir / BUNDLE_DIR, config=config, params=best_params, data=job.bundle_data,
                 run=run_summary(results, workdir))
  return results


def check_batch_sizes(config: ml_collections.ConfigDict, data_parallel: int) -> None:
  """Batches (and micro-batches) must split evenly over the mesh's data-parallel groups."""
  accum = config.train.grad_accum_steps
  if config.train.batch_size % accum:
    raise ValueError(f"train.batch_size={config.train.batch_size} must be divisible by "
                     f"train.grad_accum_steps={accum}")
  for field, rows in (("train.batch_size / train.grad_accum_steps", config.train.batch_size // accum),
                      ("eval.batch_size", config.eval.batch_size)):
    if rows % data_parallel:
      raise ValueError(f"{field}={rows} must be divisible by the {data_parallel} data-parallel "
                       f"groups of train.mesh (the mesh's 'data' axis)")


def run_summary(results: dict, workdir: pathlib.Path) -> dict:
  """What a bundle records of the run it came from."""
  return {"workdir": str(workdir.absolute()), "test": results["test"],
          **{key: results[key] for key in ("task", "primary_protocol", "best_step", "best_epoch")}}


def export_bundle(workdir: str | pathlib.Path, out: str | pathlib.Path | None = None) -> pathlib.Path:
  """Writes the bundle of the finished run in `workdir` to `out` (default `<workdir>/bundle`).

  Rebuilds the run's data from its config (the raw files must still be there
  and unchanged: the run identity is checked) and takes the best checkpoint.
  """
  workdir = pathlib.Path(workdir)
  results_path = workdir / "results.json"
  if not results_path.exists():
    raise FileNotFoundError(f"{results_path} is missing: the run in {workdir} has not finished "
                            "(a bundle holds the best parameters of a finished run)")
  results = json.loads(results_path.read_text(encoding="utf-8"))
  if "test" not in results:
    raise ValueError(f"{results_path} holds validation metrics only (a tuning trial): "
                     "train_and_evaluate(<its config>, workdir) adds the test metrics and the "
                     "bundle without training again")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text(encoding="utf-8")))
  mesh = make_mesh(num_devices=1)
  job = build_job(config, mesh)
  try:
    identity = RunIdentity(config, data_files=source_files(job.data_files),
                           data_digest=job.data_digest, data_stats=job.stats,
                           defaults=get_default_config())
    refuse, _ = identity.differences(json.loads((workdir / "run.json").read_text(encoding="utf-8")))
    if refuse:
      raise RunMismatchError(f"{workdir}: the data differs from what the run trained on, so its "
                             "vocabularies and histories cannot be rebuilt:\n  " + "\n  ".join(refuse))
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
      params = checkpoints.restore_best(job.state.params, results["best_step"])
    finally:
      checkpoints.close()
  finally:
    if hasattr(job.data_iter, "close"):
      job.data_iter.close()
  return write_bundle(out or workdir / BUNDLE_DIR, config=config, params=params,
                      data=job.bundle_data, run=run_summary(results, workdir))


class _StopOnSignal:
  """Turns the first SIGTERM or SIGINT into a request to stop after the current step.

  The previous handlers are back from the first signal on, so a second one
  acts at once (KeyboardInterrupt, or the default end of the process).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __enter__(self) -> "_StopOnSignal":
    self.signum = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    self._restore()
    log.warning("%s received: saving after the current step, then stopping (send it again to "
                "stop at once)", signal.Signals(signum).name)

  def _restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore()


def _train(state, progress: Progress, *, config, job: Job, mesh, checkpoints: Checkpoints,
           writer: MetricWriter, stop: _StopOnSignal, workdir: pathlib.Path, hooks: _Hooks):
  """Steps until early stopping or the last step; evaluates and checkpoints every `eval_every` steps."""
  steps_per_epoch, total_steps = job.steps_per_epoch, job.total_steps
  eval_every = max(1, int(config.train.eval_every_epochs * steps_per_epoch))
  train_step = job.make_train_step(state)
  metric = config.train.early_stopping_metric
  sign = 1.0 if higher_is_better(metric) else -1.0
  step = int(state.step)
  saved_step = step if checkpoints.latest_step() == step else None
  guard = _NonFiniteGuard(config.train, int(state.nonfinite_steps), step)
  bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=2.0,
             disable=progress.finished or not config.train.progress_bar or not is_primary())
  window_start, window_steps, window_events = time.perf_counter(), 0, 0.0
  segment_start = time.perf_counter()

  while not progress.finished and step < total_steps:
    state, metrics = train_step(state, global_batch(next(job.data_iter), mesh,
                                                    config.train.batch_size))
    step += 1
    window_steps += 1
    window_events += metrics["events"] if "events" in metrics else metrics["examples"]  # no sync
    bar.update(1)
    evaluate_now = step % eval_every == 0 or step == total_steps
    if step % config.train.log_every_steps == 0 or evaluate_now:
      metrics = jax.device_get(metrics)
      elapsed = time.perf_counter() - window_start
      bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
      writer.write(step, "train", {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                                   "steps_per_second": window_steps / elapsed,
                                   "events_per_second": float(window_events) / elapsed,
                                   "nonfinite_steps": metrics["nonfinite_steps"]},
                   epoch=step / steps_per_epoch)
      window_start, window_steps, window_events = time.perf_counter(), 0, 0.0
      guard.check(metrics, step, writer)

    if evaluate_now:
      guard.check_interval(step)
      valid = job.evaluate(state.params, "valid")[job.primary]
      if metric not in valid:
        raise ValueError(f"train.early_stopping_metric={metric!r} is not among {sorted(valid)}")
      score = sign * valid[metric]
      now = time.perf_counter()
      progress.train_seconds += now - segment_start
      segment_start = now
      writer.write(step, "valid", valid, epoch=step / steps_per_epoch, protocol=job.primary,
                   train_seconds=progress.train_seconds)
      if progress.best_step < 0 or score > progress.best_metric:
        progress.best_metric, progress.best_step = score, step
        progress.evals_without_improvement = 0
        checkpoints.save_best(step, state.params)
      else:
        progress.evals_without_improvement += 1
      progress.finished = (progress.evals_without_improvement >= config.train.patience
                           or step >= total_steps)
      log.info("step %d epoch %.1f: valid %s=%.4f (best %.4f at step %d)%s", step, step / steps_per_epoch,
               metric, valid[metric], sign * progress.best_metric, progress.best_step,
               " - stopping" if progress.finished else "")
      checkpoints.save_latest(step, state, job.data_iter, progress)
      saved_step = step
      if hooks.on_evaluation is not None:
        checkpoints.wait()
        hooks.on_evaluation(step / steps_per_epoch, valid)

    if hooks.past_deadline() and not progress.finished:
      if saved_step != step:
        progress.train_seconds += time.perf_counter() - segment_start
        checkpoints.save_latest(step, state, job.data_iter, progress)
      checkpoints.wait()
      bar.close()
      raise DeadlineReached(step, workdir)

    if stop.signum is not None:
      if saved_step != step:
        progress.train_seconds += time.perf_counter() - segment_start
        checkpoints.save_latest(step, state, job.data_iter, progress)
      checkpoints.wait()
      interrupted = TrainingInterrupted(stop.signum, step, workdir)
      writer.write(step, "interrupted", {}, signal=interrupted.signal_name,
                   epoch=step / steps_per_epoch)
      bar.close()
      log.warning("%s", interrupted)
      raise interrupted
  bar.close()
  checkpoints.wait()
  return state


class _NonFiniteGuard:
  """Stops on the first non-finite step ("raise"), or lets skipped steps go on ("skip").

  Steps are counted inside the jitted step (`steps.apply_gradients`), so the
  host only reads the count when it logs anyway. "skip" still stops when a
  whole evaluation interval had no finite step: the model no longer trains.
  """

  def __init__(self, train_config, nonfinite_steps: int, step: int):
    self.config = train_config
    self.seen = nonfinite_steps
    self.interval = (step, nonfinite_steps)  # (step, count) at the last evaluation

  def check(self, metrics: dict, step: int, writer: MetricWriter):
    count = int(metrics["nonfinite_steps"])
    if count == self.seen:
      return
    first = int(metrics["first_nonfinite_step"])
    self.seen = count
    if self.config.nan_policy == "skip":
      log.warning("step %d: %d steps so far had a non-finite loss or gradient; their updates "
                  "were skipped (train.nan_policy='skip')", step, count)
      return
    writer.write(step, "nonfinite", {}, first_nonfinite_step=first, nonfinite_steps=count)
    raise NonFiniteError(
        f"training diverged: the loss or gradient norm is not finite at step {first} "
        f"({count} of the steps up to {step} were). Their updates were not applied and no "
        f"checkpoint was written after them. Lower train.learning_rate "
        f"(now {self.config.learning_rate:g}), keep train.grad_clip > 0 (now "
        f"{self.config.grad_clip:g}), or set train.nan_policy='skip' to skip such steps.")

  def check_interval(self, step: int):
    start_step, start_count = self.interval
    self.interval = (step, self.seen)
    if step > start_step and self.seen - start_count == step - start_step:
      raise NonFiniteError(
          f"training diverged: every step from {start_step + 1} to {step} had a non-finite loss or "
          "gradient (train.nan_policy='skip' skipped them all), so the model no longer trains. "
          f"Lower train.learning_rate (now {self.config.learning_rate:g}).")


def _final_results(best_params, state, progress: Progress, *, config, job: Job,
                   num_devices: int, evaluate_test: bool) -> dict:
  """Test and validation metrics of the best checkpoint, with what is needed to reproduce them."""
  # The report (beyond-accuracy lists, baselines) is made on the test split too.
  test = {"test": job.evaluate(best_params, "test"), **job.report(best_params)} if evaluate_test else {}
  return {
      **test,
      "valid": job.evaluate(best_params, "valid"),
      "task": config.task,
      "primary_protocol": job.primary,
      "best_step": progress.best_step,
      "best_epoch": progress.best_step / job.steps_per_epoch,
      "steps_run": int(state.step),
      "nonfinite_steps": int(state.nonfinite_steps),
      "train_seconds": progress.train_seconds,
      "num_devices": num_devices,
      "data": job.stats,
      "config": json.loads(config.to_json_best_effort()),
  }
