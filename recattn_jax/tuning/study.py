"""`run_study`: Optuna search over a config's space, every trial a `train_and_evaluate` run.

What it promises (docs/tuning.md):
- selection on validation only: trials run with `evaluate_test=False`, so no
  trial ever computes a test metric; the best trial's test metrics are computed
  once, at the end;
- the budget: past the wall-clock deadline the running trial saves its state
  and stops (it is queued again, and resumes from its checkpoint when the study
  is continued); `max_trials` counts the study's finished trials;
- resumable: the study lives in `<workdir>/study.journal` (Optuna's journal
  storage) and each trial in `<workdir>/trials/<digest of its config>`; the
  same command continues an interrupted study (a trial killed mid-run is
  resumed from its checkpoint), and a workdir holding a study of another
  config, space or seed is refused;
- a crashed trial (a diverged loss, a config the model refuses, ...) is recorded
  with its error and the study goes on;
- the same seed gives the same study: the n-th draw is seeded with seed + n, so
  a resumed study draws what an uninterrupted one would.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pathlib
import re
import time
from typing import Any

import ml_collections
import optuna
from optuna.trial import TrialState

from recattn_jax.training.loop import DeadlineReached, TrainingInterrupted, train_and_evaluate
from recattn_jax.training.metric_writer import read_metrics
from recattn_jax.training.tasks import higher_is_better
from recattn_jax.training.workdir import RunMismatchError, WorkdirLock, config_fingerprint
from recattn_jax.tuning import space as spaces
from recattn_jax.tuning.config_files import changed_fields, load_config

log = logging.getLogger(__name__)

JOURNAL = "study.journal"
STUDY_NAME = "recattn_jax"  # one study per journal, so the folder may be renamed
IDENTITY = "study.json"
TRIALS_DIR = "trials"
PRUNERS = ("median", "halving", "none")
# A trial that stopped without a result (budget, signal, killed) is queued again to resume.
STOPPED = "stopped"
MAX_CONSECUTIVE_CRASHES = 3


class StudyError(RuntimeError):
  """The study cannot go on: several trials in a row crashed, or no trial finished."""


@dataclasses.dataclass
class StudyResult:
  best_number: int | None
  best_value: float | None
  best_config: ml_collections.ConfigDict | None
  test: dict | None            # the best trial's test metrics per protocol (computed once)
  primary_protocol: str | None
  table: list[dict]            # one row per trial
  trials_this_run: int


def parse_duration(text: str) -> float:
  """Seconds in "90s", "45m", "2h", "1h30m" or a plain number of seconds."""
  text = text.strip().lower()
  if re.fullmatch(r"\d+(\.\d+)?", text):
    return float(text)
  match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", text)
  if not text or not match:
    raise ValueError(f"--budget={text!r}: expected a duration such as 90s, 45m, 2h or 1h30m")
  hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
  return hours * 3600 + minutes * 60 + seconds


def trial_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> pathlib.Path:
  """A trial's folder, named by its config: the same config resumes (or reuses) the same run."""
  text = json.dumps(config_fingerprint(config), sort_keys=True, default=str)
  return workdir / TRIALS_DIR / hashlib.sha256(text.encode()).hexdigest()[:12]


def _pruner(name: str, config: ml_collections.ConfigDict) -> optuna.pruners.BasePruner:
  # Steps are epochs in hundredths. No trial is judged in its first tenth of the epochs:
  # a larger batch or a smaller learning rate starts slower and may still end ahead.
  warmup = round(100 * max(config.train.eval_every_epochs, 0.1 * config.train.num_epochs))
  if name == "median":
    # Compared with the median of finished trials at the same epoch, after the first two.
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)
  if name == "halving":
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup)
  if name == "none":
    return optuna.pruners.NopPruner()
  raise ValueError(f"pruner={name!r} must be one of {list(PRUNERS)}")


def _storage(workdir: pathlib.Path) -> optuna.storages.BaseStorage:
  return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(workdir / JOURNAL)))


def load_study(workdir: str | pathlib.Path) -> optuna.Study:
  """The study in `workdir`, read only (e.g. to plot it while it runs)."""
  path = pathlib.Path(workdir) / JOURNAL
  if not path.exists():
    raise FileNotFoundError(f"{path}: no study here")
  return optuna.load_study(study_name=STUDY_NAME, storage=_storage(pathlib.Path(workdir)))


def _check_identity(workdir: pathlib.Path, identity: dict):
  path = workdir / IDENTITY
  if not path.exists():
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(identity, indent=2, sort_keys=True, default=str), encoding="utf-8")
    tmp.replace(path)
    return
  saved = json.loads(path.read_text(encoding="utf-8"))
  identity = json.loads(json.dumps(identity, default=str))
  changed = []
  for key in sorted(set(saved) | set(identity)):
    old, new = saved.get(key), identity.get(key)
    if key == "config" and isinstance(old, dict) and isinstance(new, dict):
      changed += [f"config {f}: {old.get(f, '<absent>')!r} in the study, {new.get(f, '<absent>')!r} now"
                  for f in sorted(set(old) | set(new)) if old.get(f) != new.get(f)]
    elif old != new:
      changed.append(f"{key}: {old!r} in the study, {new!r} now")
  if changed:
    raise RunMismatchError(f"{workdir} holds a study of another setup; use another --workdir to "
                           "start a new study:\n  " + "\n  ".join(changed))


def _done(trial: optuna.trial.FrozenTrial) -> bool:
  """Finished for good: complete, pruned, or crashed (not merely stopped, which resumes)."""
  return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
      trial.state == TrialState.FAIL and STOPPED not in trial.user_attrs)


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial, why: str):
  study.enqueue_trial(dict(trial.params), user_attrs={"resumes": trial.number})
  log.info("trial %d (%s) is queued again; it resumes from its checkpoint", trial.number, why)


def run_study(config: ml_collections.ConfigDict, space: spaces.Space, workdir: str | pathlib.Path, *,
              config_source: str, budget_seconds: float | None = None, max_trials: int | None = None,
              seed: int = 0, pruner: str = "median", startup_trials: int = 5,
              baseline: bool = True) -> StudyResult:
  """Tunes `config` over `space`; returns (and writes to `workdir`) the table and the best trial.

  `config_source` is the shipped config's name or the config file's path that
  `config` came from, for the best config's file. `baseline` makes the first
  trial the config's own values (where the space can express them), so the
  table says what tuning gained over it.
  """
  if budget_seconds is None and max_trials is None:
    raise ValueError("give a wall-clock budget, a number of trials, or both")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  spaces.check_space(space, config)
  deadline = None if budget_seconds is None else time.time() + budget_seconds
  metric = config.train.early_stopping_metric
  direction = "maximize" if higher_is_better(metric) else "minimize"
  with WorkdirLock(workdir):
    _check_identity(workdir, {"config": config_fingerprint(config), "space": spaces.describe(space),
                              "seed": seed, "metric": metric})
    storage = _storage(workdir)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction=direction,
                                pruner=_pruner(pruner, config), load_if_exists=True)
    # We hold the lock, so a trial still "running" belongs to a process that was killed.
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
      trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
      storage.set_trial_user_attr(trial_id, STOPPED, "killed")
      study.tell(trial.number, state=TrialState.FAIL)
      _requeue(study, trial, "killed")
    if baseline and not study.trials:
      study.enqueue_trial(spaces.baseline_params(space, config), user_attrs={"baseline": True})
    ran, crashes = 0, 0
    while True:
      done = sum(_done(t) for t in study.get_trials(deepcopy=False))
      if max_trials is not None and done >= max_trials:
        break
      if deadline is not None and time.time() >= deadline:
        log.info("budget spent")
        break
      # Seeded by the count of finished trials: what the n-th draws depends only on those
      # before it, so a resumed study draws what an uninterrupted one would.
      study.sampler = optuna.samplers.TPESampler(seed=seed + done, n_startup_trials=startup_trials)
      trial = study.ask()
      outcome = _run_trial(study, trial, config, space, workdir, metric=metric, deadline=deadline)
      ran += 1
      crashes = crashes + 1 if outcome == "crashed" else 0
      _print_progress(study, trial.number, metric, deadline, max_trials)
      if outcome == "budget":
        break
      if crashes >= MAX_CONSECUTIVE_CRASHES:
        _write_table(workdir, trial_table(study, metric))
        raise StudyError(f"{crashes} trials in a row crashed; the last: "
                         f"{study.trials[trial.number].user_attrs.get('error')}. Fix the config or "
                         "the space; the same command continues the study.")
    table = trial_table(study, metric)
    _write_table(workdir, table)
    return _finish(study, config, space, workdir, config_source=config_source, table=table,
                   metric=metric, ran=ran)


def _tracked(config: ml_collections.ConfigDict, number: int, workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """The trials side by side in the trackers: one group, one MLflow store for the study."""
  tracking = config.train.tracking
  tracking.group = tracking.group or workdir.absolute().name
  tracking.run_name = f"trial_{number}"
  if not tracking.mlflow_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
    tracking.mlflow_uri = f"sqlite:///{(workdir / 'mlflow.db').absolute()}"
  return config


def _run_trial(study, trial: optuna.Trial, config, space, workdir: pathlib.Path, *, metric: str,
               deadline: float | None) -> str:
  """Runs one trial and tells the study how it ended; returns "complete", "pruned", "crashed" or "budget"."""
  started = time.time()
  try:
    trial_config = _tracked(spaces.apply(config, spaces.sample(space, trial)), trial.number, workdir)
    run_dir = trial_workdir(workdir, trial_config)
    trial.set_user_attr("workdir", str(run_dir.relative_to(workdir)))
    reported = set()

    def report_once(epoch: float, value: float):
      step = round(epoch * 100)  # epochs in hundredths: trials at the same epoch are compared
      if step not in reported:
        reported.add(step)
        trial.report(value, step)

    def report(epoch: float, valid: dict):
      report_once(epoch, valid[metric])
      trial.set_user_attr("epochs", epoch)
      if trial.should_prune():
        raise optuna.TrialPruned(f"{metric} {valid[metric]:.4f} at epoch {epoch:g}")

    # A resumed trial first reports what its run had already measured.
    if (run_dir / "metrics.jsonl").exists():
      for record in read_metrics(run_dir):
        if record["split"] == "valid" and metric in record:
          report_once(record["epoch"], record[metric])
    results = train_and_evaluate(trial_config, run_dir, evaluate_test=False, on_evaluation=report,
                                 deadline=deadline)
  except optuna.TrialPruned as e:
    trial.set_user_attr("minutes", (time.time() - started) / 60)
    trial.set_user_attr("pruned", str(e))
    study.tell(trial, state=TrialState.PRUNED)
    return "pruned"
  except (DeadlineReached, TrainingInterrupted, KeyboardInterrupt) as e:
    trial.set_user_attr("minutes", (time.time() - started) / 60)
    why = "budget" if isinstance(e, DeadlineReached) else "interrupted"
    trial.set_user_attr(STOPPED, why)
    study.tell(trial, state=TrialState.FAIL)
    _requeue(study, trial, why)
    if why == "budget":
      return why
    raise
  except Exception as e:  # a crashed trial is recorded and skipped
    trial.set_user_attr("minutes", (time.time() - started) / 60)
    trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
    log.warning("trial %d crashed: %s: %s", trial.number, type(e).__name__, e)
    study.tell(trial, state=TrialState.FAIL)
    return "crashed"
  value = results["valid"][results["primary_protocol"]][metric]
  trial.set_user_attr("minutes", (time.time() - started) / 60)
  if results["best_step"] > 0:
    trial.set_user_attr("epochs", results["steps_run"] * results["best_epoch"] / results["best_step"])
  trial.set_user_attr("best_epoch", results["best_epoch"])
  trial.set_user_attr("train_seconds", results["train_seconds"])
  if not math.isfinite(value):
    trial.set_user_attr("error", f"validation {metric} is {value}")
    study.tell(trial, state=TrialState.FAIL)
    return "crashed"
  study.tell(trial, value)
  return "complete"


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
  complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
  return study.best_trial if complete else None


def _print_progress(study, number: int, metric: str, deadline: float | None, max_trials: int | None):
  trial = study.trials[number]
  attrs = trial.user_attrs
  if trial.state == TrialState.COMPLETE:
    what = f"{metric} {trial.value:.4f}"
  elif trial.state == TrialState.PRUNED:
    what = f"pruned ({attrs.get('pruned', '')})"
  elif STOPPED in attrs:
    what = f"stopped ({attrs[STOPPED]})"
  else:
    what = f"crashed ({' '.join(attrs.get('error', '?').split())[:160]})"
  best = _best(study)
  left = []
  if deadline is not None:
    left.append(f"{max(0.0, deadline - time.time()) / 60:.1f} min")
  if max_trials is not None:
    left.append(f"{max(0, max_trials - sum(_done(t) for t in study.trials))} trials")
  params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
  print(f"trial {number}: {what} in {attrs.get('minutes', 0):.1f} min"
        + (f"; best {best.value:.4f} (trial {best.number})" if best else "")
        + (f"; left: {', '.join(left)}" if left else "") + f" | {params}", flush=True)


def _short(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_table(study: optuna.Study, metric: str) -> list[dict]:
  rows = []
  for trial in study.trials:
    attrs = trial.user_attrs
    state = trial.state.name.lower()
    if trial.state == TrialState.FAIL:
      state = f"stopped ({attrs[STOPPED]})" if STOPPED in attrs else "crashed"
    elif trial.state == TrialState.WAITING:
      state = "queued"  # to run (or resume) in the next invocation
    rows.append({"trial": trial.number, "state": state,
                 f"valid {metric}": trial.value if trial.value is not None else (
                     trial.intermediate_values[max(trial.intermediate_values)]
                     if trial.intermediate_values else None),
                 "epochs": attrs.get("epochs"), "best epoch": attrs.get("best_epoch"),
                 "minutes": attrs.get("minutes"),
                 **{k: v for k, v in trial.params.items()},
                 "note": attrs.get("error") or ("baseline" if attrs.get("baseline") else "")
                 or (f"resumes trial {attrs['resumes']}" if "resumes" in attrs else ""),
                 "workdir": attrs.get("workdir", "")})
  return rows


def format_table(rows: list[dict]) -> str:
  """The trials as an aligned text table (floats to 4 significant digits)."""
  if not rows:
    return "(no trials)"
  columns = list(dict.fromkeys(k for row in rows for k in row if k != "workdir"))
  cells = [[_cell(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
  lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
  return "\n".join(lines)


def _cell(value) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)[:60]


def _write_table(workdir: pathlib.Path, rows: list[dict]):
  columns = list(dict.fromkeys(k for row in rows for k in row))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns)
  writer.writeheader()
  writer.writerows(rows)
  for name, text in (("trials.csv", buffer.getvalue()), ("trials.txt", format_table(rows) + "\n")):
    tmp = workdir / (name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(workdir / name)


def _finish(study, config, space, workdir: pathlib.Path, *, config_source: str, table: list[dict],
            metric: str, ran: int) -> StudyResult:
  best = _best(study)
  if best is None:
    return StudyResult(None, None, None, None, None, table, ran)
  best_config = spaces.apply(config, spaces.sample(space, optuna.trial.FixedTrial(best.params)))
  config_path = write_config_file(workdir / "best_config.py", best_config, config_source,
                                  doc=f"Trial {best.number} of the study in {workdir.absolute()}: "
                                      f"validation {metric} {best.value:.4f}.")
  results_path = workdir / "best_results.json"
  saved = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {}
  if saved.get("trial") == best.number:
    test, primary = saved["test"], saved["primary_protocol"]
  else:
    # The one time the study looks at the test split: the finished best run adds its test
    # metrics and bundle without training again.
    results = train_and_evaluate(_tracked(copy.deepcopy(best_config), best.number, workdir),
                                 workdir / best.user_attrs["workdir"])
    test, primary = results["test"], results["primary_protocol"]
    payload = {"primary_protocol": primary, "trial": best.number, "params": best.params, f"valid {metric}": best.value,
               "workdir": best.user_attrs["workdir"], "config_file": str(config_path),
               "valid": results["valid"], "test": test, "best_epoch": results["best_epoch"]}
    tmp = results_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(results_path)
  return StudyResult(best.number, best.value, best_config, test, primary, table, ran)


def write_config_file(path: pathlib.Path, config: ml_collections.ConfigDict, source: str, *,
                      doc: str) -> pathlib.Path:
  """A config file whose `get_config()` is `source`'s config with the fields that differ set."""
  changes = changed_fields(load_config(source), config)
  lines = [f'"""{doc}', "", f"  python -m recattn_jax.train --config {path.absolute()} --workdir runs/{path.parent.name}_best",
           '"""', "", "from recattn_jax.tuning.config_files import load_config", "", "",
           "def get_config():", f"  config = load_config({source!r})"]
  lines += [f"  config.{field} = {value!r}" for field, value in changes.items()]
  lines += ["  return config", ""]
  tmp = path.with_suffix(".tmp")
  tmp.write_text("\n".join(lines), encoding="utf-8")
  tmp.replace(path)
  reloaded = load_config(str(path))
  if config_fingerprint(reloaded) != config_fingerprint(config):
    raise AssertionError(f"{path} does not reproduce the best trial's config")
  return path
