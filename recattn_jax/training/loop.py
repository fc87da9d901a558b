"""`train_and_evaluate(config, workdir)`: the whole job, resumable from `workdir`.

The loop is shared by every task; what differs (data, model, loss and
evaluation) comes from `tasks.build_job`.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time

import jax
import ml_collections
from tqdm import tqdm

from recattn_jax.training.checkpoint import Checkpoints, Progress
from recattn_jax.training.metric_writer import MetricWriter
from recattn_jax.training.steps import make_mesh, shard_batch
from recattn_jax.training.tasks import PROTOCOLS, Job, build_job, higher_is_better

log = logging.getLogger(__name__)


def _write_json(path: pathlib.Path, payload: dict):
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
  os.replace(tmp, path)


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains until early stopping or `train.num_epochs`, then reports test metrics of the best model.

  Rerunning with the same `workdir` resumes from the latest checkpoint; a run
  that had finished only recomputes and rewrites the results.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = make_mesh(config.train.num_devices)
  for field in ("train.batch_size", "eval.batch_size"):
    section, key = field.split(".")
    if config[section][key] % mesh.size:
      raise ValueError(f"{field}={config[section][key]} must be divisible by the {mesh.size} devices")

  job = build_job(config, mesh)
  log.info("data: %s", json.dumps(job.stats, default=str))
  checkpoints = Checkpoints(workdir)
  progress = Progress()
  state = job.state
  restored = checkpoints.restore_latest(state, job.data_iter)
  if restored is not None:
    state, progress = restored
    log.info("resuming from step %d (finished=%s)", int(state.step), progress.finished)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2), encoding="utf-8")

  writer = MetricWriter(workdir, resume_step=int(state.step))
  try:
    state = _train(state, progress, config=config, job=job, mesh=mesh, checkpoints=checkpoints,
                   writer=writer)
    results = _final_results(state, progress, config=config, job=job, checkpoints=checkpoints,
                             num_devices=mesh.size)
    writer.write(int(state.step), "test", results["test"][job.primary], protocol=job.primary)
  finally:
    if hasattr(job.data_iter, "close"):
      job.data_iter.close()
    writer.close()
    checkpoints.close()
  _write_json(workdir / "results.json", results)
  return results


def _train(state, progress: Progress, *, config, job: Job, mesh, checkpoints: Checkpoints,
           writer: MetricWriter):
  """Steps until early stopping or the last step; evaluates and checkpoints every `eval_every` steps."""
  steps_per_epoch, total_steps = job.steps_per_epoch, job.total_steps
  eval_every = max(1, int(config.train.eval_every_epochs * steps_per_epoch))
  train_step = job.make_train_step(state)
  metric = config.train.early_stopping_metric
  sign = 1.0 if higher_is_better(metric) else -1.0
  step = int(state.step)
  bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=2.0,
             disable=progress.finished or not config.train.progress_bar)
  window_start, window_steps, window_events = time.perf_counter(), 0, 0.0
  segment_start = time.perf_counter()

  while not progress.finished and step < total_steps:
    state, metrics = train_step(state, shard_batch(next(job.data_iter), mesh))
    step += 1
    window_steps += 1
    window_events += metrics["events"] if "events" in metrics else metrics["examples"]  # no sync
    bar.update(1)
    if step % config.train.log_every_steps == 0 or step % eval_every == 0:
      metrics = jax.device_get(metrics)
      elapsed = time.perf_counter() - window_start
      bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
      writer.write(step, "train", {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                                   "steps_per_second": window_steps / elapsed,
                                   "events_per_second": float(window_events) / elapsed},
                   epoch=step / steps_per_epoch)
      window_start, window_steps, window_events = time.perf_counter(), 0, 0.0

    if step % eval_every == 0 or step == total_steps:
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
  bar.close()
  checkpoints.wait()
  return state


def _final_results(state, progress: Progress, *, config, job: Job, checkpoints: Checkpoints,
                   num_devices: int) -> dict:
  """Test and validation metrics of the best checkpoint, with what is needed to reproduce them."""
  best_params = checkpoints.restore_best(state.params)
  return {
      "test": job.evaluate(best_params, "test"),
      "valid": job.evaluate(best_params, "valid"),
      **job.report(best_params),
      "task": config.get("task", "ranking"),
      "primary_protocol": job.primary,
      "best_step": progress.best_step,
      "best_epoch": progress.best_step / job.steps_per_epoch,
      "steps_run": int(state.step),
      "train_seconds": progress.train_seconds,
      "num_devices": num_devices,
      "data": job.stats,
      "config": json.loads(config.to_json_best_effort()),
  }
