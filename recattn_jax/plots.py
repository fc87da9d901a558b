"""Training and validation curves of a run, or of every trial of a study, drawn to a PNG.

`plot(workdir, out)` looks at what `workdir` holds: a run (`metrics.jsonl`)
gives its training loss and validation metrics per epoch; a study
(`study.journal`, `recattn_jax.tune`) gives every trial's validation curve
(complete, pruned, stopped) and the best value so far per trial.
Needs matplotlib (`pip install 'recattn_jax[plot]'`).
"""

from __future__ import annotations

import json
import pathlib

from recattn_jax.training.metric_writer import read_metrics

try:  # studies need Optuna (the `tune` extra); single runs do not
  import optuna
  from optuna.trial import TrialState

  from recattn_jax.tuning.study import load_study
except ImportError:
  optuna = None


def _pyplot():
  try:
    import matplotlib
  except ImportError:
    raise ImportError("plotting needs matplotlib: pip install 'recattn_jax[plot]'") from None
  matplotlib.use("Agg")  # files only, no display needed
  import matplotlib.pyplot as plt
  return plt


def _metric(workdir: pathlib.Path, metric: str | None) -> str:
  if metric:
    return metric
  config = workdir / "config.json"
  if config.exists():
    return json.loads(config.read_text(encoding="utf-8"))["train"]["early_stopping_metric"]
  return "NDCG@10"


def _check_metric(records: list[dict], metric: str, where: pathlib.Path):
  """An unknown --metric is an error, not an empty plot."""
  valid = [r for r in records if r["split"] == "valid"]
  if valid and not any(metric in r for r in valid):
    known = sorted(set(valid[0]) - {"step", "split", "epoch", "protocol", "train_seconds"})
    raise ValueError(f"{where}: no validation metric {metric!r}; recorded: {known}")


def _curve(records: list[dict], split: str, name: str) -> tuple[list[float], list[float]]:
  points = [(r["epoch"], r[name]) for r in records if r["split"] == split and name in r and "epoch" in r]
  return [p[0] for p in points], [p[1] for p in points]


def plot_run(workdir: str | pathlib.Path, out: str | pathlib.Path, metric: str | None = None) -> pathlib.Path:
  workdir = pathlib.Path(workdir)
  records = read_metrics(workdir)
  metric = _metric(workdir, metric)
  _check_metric(records, metric, workdir / "metrics.jsonl")
  plt = _pyplot()
  fig, (loss_ax, valid_ax) = plt.subplots(1, 2, figsize=(11, 4))
  loss_ax.plot(*_curve(records, "train", "loss"), lw=1)
  loss_ax.set(xlabel="epoch", ylabel="training loss", title=workdir.name)
  names = [metric] + [n for n in ("HR@10", "NDCG@10") if n != metric]
  for name in names:
    epochs, values = _curve(records, "valid", name)
    if values:
      valid_ax.plot(epochs, values, marker="o", ms=3, label=name)
  results = workdir / "results.json"
  if results.exists():
    best = json.loads(results.read_text(encoding="utf-8"))["best_epoch"]
    valid_ax.axvline(best, color="gray", ls=":", label=f"best epoch {best:g}")
  valid_ax.set(xlabel="epoch", ylabel="validation", title="validation")
  valid_ax.legend()
  return _save(fig, plt, out)


def plot_study(workdir: str | pathlib.Path, out: str | pathlib.Path, metric: str | None = None) -> pathlib.Path:
  if optuna is None:
    raise ImportError("plotting a study needs optuna: pip install 'recattn_jax[tune]'")
  workdir = pathlib.Path(workdir)
  study = load_study(workdir)
  identity = json.loads((workdir / "study.json").read_text(encoding="utf-8"))
  metric = metric or identity["metric"]
  plt = _pyplot()
  fig, (curves_ax, best_ax) = plt.subplots(1, 2, figsize=(11, 4))
  best = study.best_trial if any(t.state == TrialState.COMPLETE for t in study.trials) else None
  styles = {TrialState.COMPLETE: "-", TrialState.PRUNED: "--", TrialState.FAIL: ":"}
  for trial in study.trials:
    run_dir = workdir / trial.user_attrs.get("workdir", "-")
    if trial.state not in styles or not (run_dir / "metrics.jsonl").exists():
      continue
    records = read_metrics(run_dir)
    _check_metric(records, metric, run_dir / "metrics.jsonl")
    epochs, values = _curve(records, "valid", metric)
    is_best = best is not None and trial.number == best.number
    curves_ax.plot(epochs, values, styles[trial.state], lw=2.5 if is_best else 1,
                   alpha=1.0 if is_best else 0.6,
                   label=f"trial {trial.number} (best)" if is_best else None)
  curves_ax.set(xlabel="epoch", ylabel=f"validation {metric}",
                title="trials (solid: complete, dashed: pruned, dotted: stopped)")
  if best is not None:
    curves_ax.legend()
  finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
  sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
  running, xs, ys = None, [], []
  for trial in finished:
    if running is None or sign * trial.value > sign * running:
      running = trial.value
    xs.append(trial.number)
    ys.append(running)
  best_ax.scatter([t.number for t in finished], [t.value for t in finished], s=12, label="trial")
  best_ax.step(xs, ys, where="post", color="C1", label="best so far")
  best_ax.set(xlabel="trial", ylabel=f"validation {metric}", title=workdir.name)
  best_ax.legend()
  return _save(fig, plt, out)


def _save(fig, plt, out) -> pathlib.Path:
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  tmp = out.with_name(out.name + ".tmp.png")
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  tmp.replace(out)
  return out


def plot(workdir: str | pathlib.Path, out: str | pathlib.Path | None = None,
         metric: str | None = None) -> pathlib.Path:
  """Draws the run or study in `workdir` to `out` (default `<workdir>/curves.png`)."""
  workdir = pathlib.Path(workdir)
  out = out or workdir / "curves.png"
  if (workdir / "study.journal").exists():
    return plot_study(workdir, out, metric)
  if (workdir / "metrics.jsonl").exists():
    return plot_run(workdir, out, metric)
  raise FileNotFoundError(f"{workdir} holds neither a run (metrics.jsonl) nor a study (study.journal)")
