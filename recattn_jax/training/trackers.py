"""Experiment trackers: where a run's metrics go besides `metrics.jsonl` (`train.trackers`).

Each backend is a `Tracker` (log a step's metrics of one split, close),
registered by name in `TRACKERS`; `train.tracking` names the experiment, the
run and the group a run belongs to (a tuning study's trials share one), so
that runs appear side by side in the tracker's UI.

  tensorboard  event files in <workdir>/tensorboard (tensorboardX)
  wandb        Weights & Biases; offline (files in <workdir>/wandb, `wandb sync` later)
               unless $WANDB_MODE says otherwise or the service is reachable with a key
  mlflow       an MLflow store: train.tracking.mlflow_uri, $MLFLOW_TRACKING_URI, else
               sqlite:///<workdir>/mlflow.db (`mlflow ui --backend-store-uri ...`)

A resumed run continues its tracker run (its id is kept in
<workdir>/trackers.json); TensorBoard also drops the steps past the resumed
checkpoint, the others keep what they had already received.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import socket
from typing import Callable, Protocol

import ml_collections

from recattn_jax.registry import Registry
from recattn_jax.training.workdir import config_leaves

log = logging.getLogger(__name__)

IDS_FILE = "trackers.json"  # in a workdir: each backend's run id, for resuming it


class Tracker(Protocol):
  def log(self, step: int, split: str, metrics: dict[str, float]) -> None: ...
  def close(self) -> None: ...


# A factory: (workdir, config, resume_step) -> Tracker. `package` is what it imports.
TRACKERS: Registry[Callable[..., Tracker]] = Registry("tracker", "train.trackers")


def check_trackers(names) -> list[str]:
  """Problems with `train.trackers`: unknown names, repeated ones, packages not installed."""
  problems = []
  for name in names:
    if name not in TRACKERS:
      problems.append(f"train.trackers: {name!r} is not a known tracker; known: {TRACKERS.names()}")
    elif importlib.util.find_spec(TRACKERS.spec(name)["package"]) is None:
      problems.append(f"train.trackers: {name!r} needs the {TRACKERS.spec(name)['package']!r} "
                      f"package: pip install {TRACKERS.spec(name)['pip']}")
  if len(set(names)) != len(names):
    problems.append(f"train.trackers={tuple(names)!r} names a tracker twice")
  return problems


def open_trackers(workdir: pathlib.Path, config: ml_collections.ConfigDict, resume_step: int) -> list[Tracker]:
  # Configs saved before trackers existed wrote TensorBoard files only.
  names = config.train.get("trackers", ("tensorboard",))
  return [TRACKERS.get(name)(workdir, config, resume_step) for name in names]


def _tracking(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  fields = {"experiment": "", "run_name": "", "group": "", "mlflow_uri": ""}
  fields.update(config.train.get("tracking", {}))
  return ml_collections.ConfigDict(fields)


def _tag(split: str, name: str) -> str:
  # TensorBoard and MLflow keys may not contain "@".
  return f"{split}/{name.replace('@', '_at_')}"


def run_name(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> str:
  return _tracking(config).run_name or workdir.absolute().name


def _saved_id(workdir: pathlib.Path, backend: str) -> str | None:
  path = workdir / IDS_FILE
  return json.loads(path.read_text(encoding="utf-8")).get(backend) if path.exists() else None


def _save_id(workdir: pathlib.Path, backend: str, run_id: str):
  path = workdir / IDS_FILE
  ids = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
  ids[backend] = run_id
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(ids, indent=2), encoding="utf-8")
  os.replace(tmp, path)


@TRACKERS.register("tensorboard", package="tensorboardX", pip="tensorboardx")
class TensorBoardTracker:
  def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict, resume_step: int):
    del config
    from tensorboardX import SummaryWriter
    self._writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step or None)

  def log(self, step, split, metrics):
    for name, value in metrics.items():
      self._writer.add_scalar(_tag(split, name), float(value), int(step))

  def close(self):
    self._writer.close()


def _wandb_mode() -> str:
  """$WANDB_MODE if set; "online" with an API key and the service reachable; else "offline"."""
  if os.environ.get("WANDB_MODE"):
    return os.environ["WANDB_MODE"]
  netrc = pathlib.Path.home() / ".netrc"
  has_key = bool(os.environ.get("WANDB_API_KEY")) or (
      netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="replace"))
  if has_key:
    try:
      socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
      return "online"
    except OSError:
      pass
  return "offline"


@TRACKERS.register("wandb", package="wandb", pip="wandb")
class WandbTracker:
  def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict, resume_step: int):
    del resume_step  # W&B keeps the steps it has; later ones must be larger, so a resume continues
    import wandb
    mode = _wandb_mode()
    if mode == "offline":
      log.info("wandb: offline; upload later with `wandb sync %s/wandb/offline-run-*`", workdir)
    tracking = _tracking(config)
    self._run = wandb.init(
        project=tracking.experiment or "recattn_jax", group=tracking.group or None,
        name=run_name(workdir, config), dir=str(workdir), mode=mode,
        id=_saved_id(workdir, "wandb"), resume="allow", config=config_leaves(config),
        settings=wandb.Settings(silent=True, console="off"))
    _save_id(workdir, "wandb", self._run.id)

  def log(self, step, split, metrics):
    self._run.log({f"{split}/{name}": float(value) for name, value in metrics.items()}, step=int(step))

  def close(self):
    self._run.finish()


@TRACKERS.register("mlflow", package="mlflow", pip="mlflow-skinny sqlalchemy alembic")
class MlflowTracker:
  def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict, resume_step: int):
    del resume_step
    from mlflow.tracking import MlflowClient
    tracking = _tracking(config)
    uri = (tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
           or f"sqlite:///{(workdir / 'mlflow.db').absolute()}")
    self._client = MlflowClient(tracking_uri=uri)
    run_id = _saved_id(workdir, "mlflow")
    if run_id is None:
      name = tracking.experiment or "recattn_jax"
      experiment = self._client.get_experiment_by_name(name)
      experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(name)
      tags = {"group": tracking.group} if tracking.group else {}
      run_id = self._client.create_run(experiment_id, run_name=run_name(workdir, config),
                                       tags=tags).info.run_id
      from mlflow.entities import Param
      params = [Param(key, str(value)[:500]) for key, value in config_leaves(config).items()]
      for start in range(0, len(params), 100):  # MLflow's limits per batch and per value
        self._client.log_batch(run_id, params=params[start:start + 100])
      _save_id(workdir, "mlflow", run_id)
    self._run_id = run_id

  def log(self, step, split, metrics):
    for name, value in metrics.items():
      self._client.log_metric(self._run_id, _tag(split, name), float(value), step=int(step))

  def close(self):
    self._client.set_terminated(self._run_id)
