"""Metrics to `workdir/metrics.jsonl` (one JSON object per line) and the run's trackers.

A crash mid-write can leave a torn last line: readers skip it with a warning
and a resumed run drops it; damage anywhere else is an error naming the line.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

import ml_collections

from recattn_jax.training.trackers import open_trackers

log = logging.getLogger(__name__)


class MetricWriter:
  """Appends records, and sends them to the trackers `config.train.trackers` names
  (`training.trackers`); `enabled=False` (processes other than the first of a run) writes nothing."""

  def __init__(self, workdir: str | pathlib.Path, config: ml_collections.ConfigDict, *,
               resume_step: int = 0, enabled: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.enabled = enabled
    if not enabled:
      return
    self._truncate_after(resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    self._trackers = open_trackers(pathlib.Path(workdir), config, resume_step)

  def _truncate_after(self, step: int):
    """Drops records past the resumed checkpoint (and old test results) so a resumed run's log reads like one run."""
    if not self.path.exists():
      return
    kept = [json.dumps(record) for record in _parse(self.path) if _kept_on_resume(record, step)]
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, self.path)

  def write(self, step: int, split: str, metrics: dict[str, float], **extra):
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, **extra, **{k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if metrics:
      for tracker in self._trackers:
        tracker.log(step, split, metrics)

  def close(self):
    if not self.enabled:
      return
    self._file.close()
    for tracker in self._trackers:
      tracker.close()


def _kept_on_resume(record: dict, step: int) -> bool:
  return record["step"] <= step and record["split"] != "test"


def _parse(path: pathlib.Path) -> list[dict]:
  lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not (isinstance(record, dict) and "step" in record and "split" in record):
        raise ValueError("no step and split")
      records.append(record)
    except ValueError as e:
      if number == len(lines):
        log.warning("%s:%d: torn last line (a crash mid-write?) skipped: %r", path, number, line[:80])
        continue
      raise ValueError(f"{path}:{number}: not a JSON record ({e}); the file is damaged "
                       "there, not just torn at the end. Move it aside to resume (its records "
                       "are then lost from the log), or repair that line.") from None
  return records


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """The records of `metrics.jsonl`, e.g. for plotting a loss curve."""
  return _parse(pathlib.Path(workdir) / "metrics.jsonl")
