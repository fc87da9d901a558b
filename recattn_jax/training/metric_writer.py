"""Metrics to `workdir/metrics.jsonl` (one JSON object per line) and TensorBoard event files."""

from __future__ import annotations

import json
import os
import pathlib

from tensorboardX import SummaryWriter


class MetricWriter:

  def __init__(self, workdir: str | pathlib.Path, *, resume_step: int = 0):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._truncate_after(resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"), purge_step=resume_step or None)

  def _truncate_after(self, step: int):
    """Drops records past the resumed checkpoint (and old test results) so a resumed run's log reads like one run."""
    if not self.path.exists():
      return
    kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and _kept_on_resume(json.loads(line), step)]
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, self.path)

  def write(self, step: int, split: str, metrics: dict[str, float], **extra):
    record = {"step": int(step), "split": split, **extra, **{k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for name, value in metrics.items():
      # TensorBoard tags may not contain "@".
      self._tb.add_scalar(f"{split}/{name.replace('@', '_at_')}", float(value), int(step))

  def close(self):
    self._file.close()
    self._tb.close()


def _kept_on_resume(record: dict, step: int) -> bool:
  return record["step"] <= step and record["split"] != "test"


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """The records of `metrics.jsonl`, e.g. for plotting a loss curve."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
