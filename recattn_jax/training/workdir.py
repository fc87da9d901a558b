"""What makes a workdir one run: a lock against a second trainer and the run's identity.

* `WorkdirLock`: `run.lock` holds an exclusive `flock` and names its holder
  (pid, host, start time). The kernel drops the lock when its process dies, so
  a lock file left by a crash is detected as stale and taken over with a
  warning; a live holder makes a second trainer fail at once.
* `RunIdentity`: `run.json` records the fingerprint of the config (every field
  but the few in `IGNORED_FIELDS` that cannot change the model, the data or
  the metrics) and of the data (size and mtime of each source file, and a
  SHA256 of the processed split). A workdir whose fingerprint differs from the
  current one is not resumed unless asked to (`force_resume`), and then the
  change is recorded.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import socket
from typing import Any

import hashlib

import ml_collections
import numpy as np

log = logging.getLogger(__name__)

# Fields that change neither the model, the data nor the metrics a run reports.
IGNORED_FIELDS = frozenset({
    "train.progress_bar", "train.log_every_steps", "train.num_devices", "train.keep_checkpoints",
    "train.mesh.data", "train.mesh.model",  # a run resumes onto another mesh
    "data.prefetch", "eval.batch_size", "eval.item_chunk",
    "train.trackers", "train.tracking.experiment", "train.tracking.run_name",
    "train.tracking.group", "train.tracking.mlflow_uri",
    "data.size_aware_for",  # the values it sized are compared themselves
})


class WorkdirLockedError(RuntimeError):
  """Another live process is training in this workdir."""


class RunMismatchError(RuntimeError):
  """The workdir holds a run of another config or other data."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: pathlib.Path, payload: Any) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class WorkdirLock:
  """`with WorkdirLock(workdir):` — exclusive use of a workdir by this process."""

  def __init__(self, workdir: str | pathlib.Path):
    self.path = pathlib.Path(workdir) / "run.lock"
    self._fd: int | None = None

  def _read_holder(self, fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace")
    try:
      return json.loads(text) if text.strip() else {}
    except ValueError:
      return {"unreadable": text[:200]}

  def acquire(self) -> "WorkdirLock":
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = self._read_holder(fd)
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        raise WorkdirLockedError(
            f"{self.path.parent} is in use by another training process (pid {holder.get('pid', '?')} "
            f"on {holder.get('host', '?')}, since {holder.get('started', '?')}). Wait for it to "
            "finish or stop it, or use another --workdir.") from None
      # The holder may have removed the file between our open and flock: then
      # we locked an orphan and must try again on the file now at the path.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    previous = self._read_holder(fd)
    if previous:
      log.warning("%s: stale lock of pid %s on %s (since %s) whose process is gone; taking it over",
                  self.path, previous.get("pid", "?"), previous.get("host", "?"),
                  previous.get("started", "?"))
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": _now()}).encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)  # closing drops the flock
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def config_leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """Every field of `config` as `a.b.c -> value`, values as they are."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(config_leaves(value, name + "."))
    else:
      flat[name] = value
  return flat


def _flatten(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config_leaves` with tuples as lists, as they compare once read back from JSON."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in config_leaves(config).items()}


# Config nodes holding a `name` and one section per registered choice: only the
# chosen section can change the run.
_CHOICE_NODES = ("model", "train.loss")


def _inactive_sections(config: ml_collections.ConfigDict) -> set[str]:
  inactive = set()
  for node_path in _CHOICE_NODES:
    node = config
    for key in node_path.split("."):
      node = node.get(key) if isinstance(node, ml_collections.ConfigDict) else None
    if isinstance(node, ml_collections.ConfigDict) and "name" in node:
      inactive |= {f"{node_path}.{key}." for key, value in node.items()
                   if isinstance(value, ml_collections.ConfigDict) and key != node.name}
  return inactive


def config_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every config field that can change the model, the data or the metrics, flattened.

  Left out: `IGNORED_FIELDS` and the sections of the models and losses not chosen.
  """
  inactive = _inactive_sections(config)
  return {k: v for k, v in _flatten(config).items()
          if k not in IGNORED_FIELDS and not any(k.startswith(prefix) for prefix in inactive)}


def source_files(paths: list[str | pathlib.Path]) -> dict[str, dict]:
  """Size and mtime of each file (a folder: each file directly in it)."""
  out = {}
  for path in paths:
    path = pathlib.Path(path).expanduser().absolute()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
      if file.is_file():
        stat = file.stat()
        out[str(file)] = {"size": stat.st_size, "mtime": stat.st_mtime}
  return out


def content_digest(*parts) -> str:
  """SHA256 of arrays and lists of arrays (ragged sequences), shapes and dtypes included."""
  digest = hashlib.sha256()

  def add(array):
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind == "U":
      array = np.frombuffer("\x00".join(map(str, array.ravel())).encode(), np.uint8)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())

  for part in parts:
    if isinstance(part, (list, tuple)):
      add(np.asarray([len(x) for x in part], np.int64))
      if part:
        add(np.concatenate([np.asarray(x) for x in part]))
    elif part is not None:
      add(part)
  return digest.hexdigest()


def _describe(value: Any) -> str:
  return json.dumps(value, default=str) if not isinstance(value, str) else repr(value)


class RunIdentity:
  """The fingerprint of a run, compared with (and recorded in) `workdir/run.json`."""

  def __init__(self, config: ml_collections.ConfigDict, *, data_files: dict[str, dict],
               data_digest: str, data_stats: dict,
               defaults: ml_collections.ConfigDict | None = None):
    """`defaults`: the library's default config. A field that a workdir's run predates is
    then no difference while it holds its default value, which by convention is what the
    code did before the field existed."""
    self.defaults = _flatten(defaults) if defaults is not None else {}
    self.record = {"config": config_fingerprint(config),
                   "data": {"files": data_files, "digest": data_digest,
                            "stats": json.loads(json.dumps(data_stats, default=str))}}

  def differences(self, saved: dict) -> tuple[list[str], list[str]]:
    """(refusing differences, harmless ones) between `saved` and this identity."""
    refuse, notes = [], []
    old_config, new_config = saved.get("config", {}), self.record["config"]
    for field in sorted(set(old_config) | set(new_config)):
      if field in IGNORED_FIELDS:
        continue
      old, new = old_config.get(field, "<absent>"), new_config.get(field, "<absent>")
      if old == "<absent>" and field in self.defaults and new == self.defaults[field]:
        notes.append(f"config {field} is newer than the workdir's run; it holds its default {_describe(new)}")
      elif old != new:
        refuse.append(f"config {field}: {_describe(old)} in the workdir, {_describe(new)} now")
    old_data, new_data = saved.get("data", {}), self.record["data"]
    old_files, new_files = old_data.get("files", {}), new_data["files"]
    for file in sorted(set(old_files) | set(new_files)):
      old, new = old_files.get(file), new_files.get(file)
      if old is None or new is None:
        refuse.append(f"data file {file}: {'not read' if old is None else 'read'} by the workdir's "
                      f"run, {'not read' if new is None else 'read'} now")
      elif old["size"] != new["size"]:
        refuse.append(f"data file {file}: {old['size']} bytes in the workdir's run, {new['size']} now")
      elif old["mtime"] != new["mtime"]:
        notes.append(f"data file {file} was modified since (same size)")
    if old_data.get("digest") != new_data["digest"]:
      old_stats, new_stats = old_data.get("stats", {}), new_data["stats"]
      changed = [f"{k} {_describe(old_stats.get(k))} -> {_describe(new_stats.get(k))}"
                 for k in sorted(set(old_stats) | set(new_stats))
                 if old_stats.get(k) != new_stats.get(k)
                 and not isinstance(old_stats.get(k, new_stats.get(k)), dict)]
      refuse.append("processed data differs (SHA256 of the split)" +
                    (": " + ", ".join(changed[:8]) if changed else " with the same statistics"))
    return refuse, notes

  def check(self, workdir: pathlib.Path, *, has_run: bool, force_resume: bool, step: int = 0,
            record: bool = True) -> list[dict]:
    """Refuses to go on in a workdir that holds another run; records the identity.

    Args:
      workdir: the run's folder.
      has_run: whether the workdir holds anything of a run (checkpoints, results); when not,
        the identity is recorded afresh.
      force_resume: go on despite differences, recording them.
      step: the step the run goes on from (recorded with forced changes).
      record: write run.json (False on all processes but the one that writes files).
    Returns:
      the recorded history of forced changes, oldest first.
    Raises:
      RunMismatchError listing what differs and how to proceed.
    """
    path = workdir / "run.json"
    if not has_run:  # nothing saved yet (or a run that failed before its first checkpoint)
      saved, refuse, notes = {}, [], []
    elif not path.exists():
      if not force_resume:
        raise RunMismatchError(
            f"{workdir} holds a run but no run.json (written by an older version, or the file was "
            "removed), so it cannot be checked that it is the same run. Use a new --workdir, or "
            "pass --force_resume to continue it anyway.")
      saved, refuse, notes = {}, ["no run.json to compare with"], []
    else:
      try:
        saved = json.loads(path.read_text(encoding="utf-8"))
      except ValueError as e:
        raise RunMismatchError(f"{path} is unreadable ({e}); use a new --workdir, or remove the "
                               "file and pass --force_resume to continue the run anyway") from None
      refuse, notes = self.differences(saved)
    for note in notes:
      log.warning("%s: %s", workdir, note)
    history = list(saved.get("forced_changes", []))
    if refuse:
      if not force_resume:
        raise RunMismatchError(
            f"{workdir} holds a run of a different config or data, so it is not resumed:\n  "
            + "\n  ".join(refuse) + "\nUse a new --workdir for the new run, or pass "
            "--force_resume (train_and_evaluate(..., force_resume=True)) to continue the old run's "
            "checkpoints with the new settings; results.json then lists these changes.")
      log.warning("%s: resuming despite differences (force_resume):\n  %s", workdir,
                  "\n  ".join(refuse))
      history.append({"time": _now(), "step": step, "changes": refuse})
    if record:
      _write_json(path, {**self.record, "forced_changes": history})
    return history
