"""Orbax checkpoints of everything a run needs to resume exactly.

Two managers under `workdir/checkpoints/`: `latest` (the state after the most
recent evaluation, with the Grain iterator position and the early-stopping
bookkeeping) and `best` (the parameters with the best validation metric).
Orbax writes into a temporary directory and renames it when complete, so a
crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


@dataclasses.dataclass
class Progress:
  """Early-stopping bookkeeping saved next to the train state."""

  best_metric: float = -1.0
  best_step: int = -1
  evals_without_improvement: int = 0
  finished: bool = False
  train_seconds: float = 0.0


class Checkpoints:

  def __init__(self, workdir: str | pathlib.Path):
    root = pathlib.Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    self.latest = ocp.CheckpointManager(root / "latest", options=options)
    self.best = ocp.CheckpointManager(root / "best", options=options)

  def save_latest(self, step: int, state: Any, data_iter: grain.DatasetIterator, progress: Progress):
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
        progress=ocp.args.JsonSave(dataclasses.asdict(progress))), force=True)

  def save_best(self, step: int, params: Any):
    self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)

  def restore_latest(self, state_like: Any, data_iter: grain.DatasetIterator) -> tuple[Any, Progress] | None:
    """Restores in place into `data_iter`; returns (state, progress) or None when there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like)),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter),
        progress=ocp.args.JsonRestore()))
    return restored.state, Progress(**restored.progress)

  def restore_best(self, params_like: Any) -> Any:
    step = self.best.latest_step()
    if step is None:
      raise FileNotFoundError(f"no best checkpoint under {self.best.directory}")
    return self.best.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params_like)))).params

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


def _abstract(tree: Any) -> Any:
  """Shape/dtype/sharding skeleton so that restored arrays land where `tree`'s live."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
