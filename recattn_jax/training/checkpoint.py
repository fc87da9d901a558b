"""Orbax checkpoints of everything a run needs to resume exactly, verified on restore.

Two managers under `workdir/checkpoints/`: `latest` (the state after the most
recent evaluation or interruption, with the Grain iterator position and the
early-stopping bookkeeping) and `best` (the parameters with the best validation
metric), each keeping the newest `keep` checkpoints.

Orbax writes into a temporary directory and renames it when complete, so a
crash never leaves a half-written checkpoint behind. Once a save is complete,
`SHA256SUMS.json` in the step directory records the size and SHA256 of every
file. A checkpoint is restored only when every file matches; one that does not
(or that has no record, e.g. after a crash between the save and its record) is
moved to `checkpoints/damaged/` and the previous one is used, with a warning.
The best checkpoint is the one of the exact step the progress names: when that
one is damaged, `CheckpointError` says what to do instead of scoring another
model.

The record also holds `FORMAT_VERSION`, the layout of what is saved. A
checkpoint of another version is refused (`CheckpointFormatError`, not moved
aside: it is intact, only not readable by this version). Arrays are restored
into the shardings of the state they replace, so a run saved on one mesh
resumes on another; the data iterator's position is saved per process, so a
resume needs the same number of processes.

On several processes, every process writes its part (Orbax); process 0 writes
the checksum record once all have finished, and moves damaged checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from recattn_jax.parallel import is_primary, sync

log = logging.getLogger(__name__)

MANIFEST = "SHA256SUMS.json"
# 1: item tables of num_items + 1 rows. 2: rows padded to a multiple of
# models.item_encoder.TABLE_ROW_MULTIPLE, so that they shard over any "model" axis.
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
  """No intact checkpoint can be restored; the message says what is damaged and what to do."""


class CheckpointFormatError(CheckpointError):
  """An intact checkpoint this version cannot read (another format version or process count)."""


@dataclasses.dataclass
class Progress:
  """Early-stopping bookkeeping saved next to the train state."""

  best_metric: float = -1.0
  best_step: int = -1
  evals_without_improvement: int = 0
  finished: bool = False
  train_seconds: float = 0.0


def sha256_file(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  return {str(p.relative_to(directory)): p for p in sorted(directory.rglob("*"))
          if p.is_file() and p.name != MANIFEST}


def write_manifest(directory: pathlib.Path) -> None:
  """Records the size and SHA256 of every file under a completed checkpoint directory."""
  record = {name: {"size": path.stat().st_size, "sha256": sha256_file(path)}
            for name, path in _files(directory).items()}
  tmp = directory / (MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"format_version": FORMAT_VERSION, "files": record}, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, directory / MANIFEST)


def verify(directory: pathlib.Path) -> str | None:
  """None when every file of the checkpoint matches its record, else what is wrong.

  Raises CheckpointFormatError for an intact record of another format version.
  """
  manifest = directory / MANIFEST
  if not manifest.is_file():
    return f"{manifest} is missing (the save did not complete, or another program wrote it)"
  try:
    record = json.loads(manifest.read_text(encoding="utf-8"))
    expected = record["files"]
  except (ValueError, KeyError, TypeError) as e:
    return f"{manifest} is unreadable ({e})"
  version = record.get("format_version", 1)
  if version != FORMAT_VERSION:
    raise CheckpointFormatError(
        f"{directory} was written in checkpoint format {version}, and this recattn_jax reads "
        f"format {FORMAT_VERSION} (" + ("item tables are now padded to whole shards"
                                        if version == 1 else "a newer layout") +
        "). Resume it with the recattn_jax version that wrote it, or train again in a new --workdir.")
  present = _files(directory)
  missing = sorted(set(expected) - set(present))
  if missing:
    return f"{directory / missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
  extra = sorted(set(present) - set(expected))
  if extra:
    return f"{directory / extra[0]} was not part of the saved checkpoint"
  for name, want in expected.items():
    path = present[name]
    if path.stat().st_size != want["size"]:
      return f"{path} has {path.stat().st_size} bytes, {want['size']} were written"
    if sha256_file(path) != want["sha256"]:
      return f"{path} fails its SHA256 check (its bytes changed after writing)"
  return None


class _Managed:
  """One Orbax manager plus the checksum record of each completed save."""

  def __init__(self, root: pathlib.Path, name: str, keep: int, read_only: bool):
    self.name = name
    self.damaged = root / "damaged"
    # A trainer removes the temporary folders of saves a crash cut short; a
    # reader must not (they may be a live trainer's saves in progress).
    self.manager = ocp.CheckpointManager(
        root / name, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only))
    self._unsealed: list[int] = []

  def step_dir(self, step: int) -> pathlib.Path:
    return pathlib.Path(self.manager.directory) / str(step)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps(), reverse=True)

  def save(self, step: int, args: ocp.args.Composite):
    self.manager.save(step, args=args, force=True)
    self._unsealed.append(step)

  def seal(self):
    """Waits for pending saves (of every process) and records their checksums."""
    self.manager.wait_until_finished()
    if not self._unsealed:
      return
    sync(f"{self.name}-saved-{self._unsealed[-1]}")
    if is_primary():
      for step in self._unsealed:
        if self.step_dir(step).is_dir():  # not already removed by max_to_keep
          write_manifest(self.step_dir(step))
    sync(f"{self.name}-sealed-{self._unsealed[-1]}")
    self._unsealed = []

  def delete(self, step: int):
    self.manager.delete(step)
    self.manager.reload()

  def quarantine(self, step: int, reason: str):
    """Moves a damaged checkpoint aside (never deletes it) so that it is not used again."""
    self.damaged.mkdir(parents=True, exist_ok=True)
    target = self.damaged / f"{self.name}-{step}"
    suffix = 1
    while target.exists():
      target = self.damaged / f"{self.name}-{step}.{suffix}"
      suffix += 1
    log.warning("%s checkpoint %s is damaged: %s; moved to %s", self.name, self.step_dir(step),
                reason, target)
    if is_primary():  # every process saw the same damage; one moves it
      shutil.move(str(self.step_dir(step)), target)
    sync(f"{self.name}-quarantined-{step}")
    self.manager.reload()

  def restore(self, step: int, args: ocp.args.Composite):
    """Verified restore of `step`; raises CheckpointError with the reason when damaged."""
    problem = verify(self.step_dir(step))
    data_iter = self.step_dir(step) / "data_iter"
    mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if problem is None and data_iter.is_dir() and not (data_iter / mine).exists():
      saved = sorted(p.name for p in data_iter.iterdir())
      raise CheckpointFormatError(
          f"{self.step_dir(step)} holds the input position of other processes ({saved}); "
          f"resume with the number of processes that saved it, not {jax.process_count()}")
    if problem is None:
      try:
        return self.manager.restore(step, args=args)
      except Exception as e:  # pylint: disable=broad-except  # any Orbax/TensorStore failure
        problem = f"Orbax could not read it ({type(e).__name__}: {str(e)[:300]})"
    raise CheckpointError(problem)


class Checkpoints:

  def __init__(self, workdir: str | pathlib.Path, keep: int = 2, *, read_only: bool = False):
    self.root = pathlib.Path(workdir).absolute() / "checkpoints"
    self.latest = _Managed(self.root, "latest", keep, read_only)
    self.best = _Managed(self.root, "best", keep, read_only)

  def latest_step(self) -> int | None:
    steps = self.latest.steps()
    return steps[0] if steps else None

  def save_latest(self, step: int, state: Any, data_iter: grain.DatasetIterator, progress: Progress):
    # Sealing both first keeps the order a resume relies on: the best
    # checkpoint a `latest` names is recorded before that `latest` is written.
    self.wait()
    self.latest.save(step, ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
        progress=ocp.args.JsonSave(dataclasses.asdict(progress))))

  def save_best(self, step: int, params: Any):
    # A best checkpoint at or after `step` belongs to a run that was resumed from
    # an earlier point; it is about to be recomputed.
    self.wait()
    for stale in self.best.steps():
      if stale >= step:
        self.best.delete(stale)
    self.best.save(step, ocp.args.Composite(params=ocp.args.StandardSave(params)))

  def restore_latest(self, state_like: Any, data_iter: grain.DatasetIterator) -> tuple[Any, Progress] | None:
    """The newest intact checkpoint whose best checkpoint is intact too; None when there is none.

    Restores in place into `data_iter`. Damaged checkpoints are moved aside
    with a warning; when checkpoints exist but none is intact, CheckpointError.
    """
    problems = []
    for step in self.latest.steps():
      try:
        restored = self.latest.restore(step, ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_like)),
            data_iter=grain.checkpoint.CheckpointRestore(data_iter),
            progress=ocp.args.JsonRestore()))
        progress = Progress(**restored.progress)
        if progress.best_step >= 0:
          self._check_best(progress.best_step)
      except CheckpointFormatError:
        raise
      except CheckpointError as e:
        problems.append(f"step {step}: {e}")
        self.latest.quarantine(step, str(e))
        continue
      return restored.state, progress
    if problems:
      raise CheckpointError(
          f"no intact checkpoint under {self.root}: " + "; ".join(problems) +
          f". The damaged ones are kept in {self.latest.damaged}. The run is reproducible from its "
          f"config and seed: train it again in a new --workdir, or move {self.root} aside "
          "to start this workdir from step 0.")
    return None

  def _check_best(self, best_step: int):
    if best_step not in self.best.steps():
      raise CheckpointError(f"its best checkpoint (step {best_step}) is missing from "
                            f"{self.best.manager.directory}")
    problem = verify(self.best.step_dir(best_step))
    if problem:
      raise CheckpointError(f"its best checkpoint (step {best_step}) is damaged: {problem}")

  def restore_best(self, params_like: Any, step: int | None = None) -> Any:
    """The parameters saved as best at `step` (None: the newest), verified; else CheckpointError."""
    self.best.seal()
    if step is None:
      step = (self.best.steps() or [-1])[0]
    if step not in self.best.steps():
      raise CheckpointError(f"no best checkpoint of step {step} under {self.best.manager.directory}"
                            f" (it has {self.best.steps()}); " + _BEST_RECOVERY)
    try:
      return self.best.restore(step, ocp.args.Composite(
          params=ocp.args.StandardRestore(_abstract(params_like)))).params
    except CheckpointFormatError:
      raise
    except CheckpointError as e:
      raise CheckpointError(f"the best checkpoint {self.best.step_dir(step)} is damaged: {e}; "
                            + _BEST_RECOVERY) from None

  def wait(self):
    self.latest.seal()
    self.best.seal()

  def close(self):
    self.wait()
    self.latest.manager.close()
    self.best.manager.close()


_BEST_RECOVERY = ("results.json was left as it was. The best model cannot be rebuilt from these "
                  "files; the run is reproducible from its config and seed: train it again in a "
                  "new --workdir.")


def _abstract(tree: Any) -> Any:
  """Shape/dtype/sharding skeleton so that restored arrays land where `tree`'s live."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
