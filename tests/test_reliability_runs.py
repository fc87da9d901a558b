"""One run per workdir: config checks, run identity, the workdir lock and signals.

The signal tests send a real SIGTERM / SIGINT to a real training process (its
steps slowed by a sleep so that the signal lands mid-training) and resume it.
"""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from recattn_jax.config import ConfigError, check_config, get_default_config
from recattn_jax.training import loop, workdir as workdir_lib
from recattn_jax.training.metric_writer import read_metrics
from tests.helpers import tiny_config, write_ratings_file

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------
# Config validation, before any work.


@pytest.mark.parametrize("field, value, allowed", [
    ("train.batch_size", 0, "integer >= 1"),
    ("train.batch_size", -8, "integer >= 1"),
    ("eval.batch_size", 0, "integer >= 1"),
    ("data.max_len", 0, "integer >= 1"),
    ("data.max_len", -5, "integer >= 1"),
    ("train.num_epochs", 0, "integer >= 1"),
    ("train.num_epochs", -1, "integer >= 1"),
    ("train.learning_rate", -0.1, "> 0"),
    ("model.sasrec.dropout_rate", 1.5, ">= 0 and < 1"),
    ("train.loss.gbce.num_negatives", 0, "integer >= 1"),
    ("train.keep_checkpoints", 1, ">= 2"),
    ("data.valid_quantile", 1.2, "> 0 and < 1"),
    ("train.nan_policy", "ignore", "one of ['raise', 'skip']"),
])
def test_out_of_range_fields_fail_before_any_work(data_file, tmp_path, field, value, allowed):
  config = tiny_config(data_file)
  *sections, key = field.split(".")
  node = config
  for section in sections:
    node = node[section]
  node[key] = value
  with pytest.raises(ConfigError, match=f"{field}={value!r} must be") as e:
    loop.train_and_evaluate(config, tmp_path / "workdir")
  assert allowed in str(e.value)
  assert not (tmp_path / "workdir").exists()  # nothing read or written


@pytest.mark.parametrize("ks", [(0, 10), (), (10, 10), (1.5,)])
def test_eval_ks_must_be_distinct_positive_integers(ks):
  config = get_default_config()
  config.eval.ks = ks
  with pytest.raises(ConfigError, match="eval.ks"):
    check_config(config)


def test_every_problem_is_listed_at_once():
  config = get_default_config()
  config.train.batch_size, config.data.max_len, config.model.hstu.num_heads = 0, 0, 3
  with pytest.raises(ConfigError) as e:
    check_config(config)
  assert all(name in str(e.value) for name in (
      "train.batch_size", "data.max_len",
      "model.hstu.embed_dim=64 must be divisible by model.hstu.num_heads=3"))


def test_rating_task_refuses_ratings_outside_the_range(tmp_path):
  path = write_ratings_file(tmp_path / "u.data", users=20, events=6)
  lines = path.read_text().splitlines()
  user, item, _, ts = lines[5].split("\t")
  lines[5] = "\t".join([user, item, "-1000", ts])
  path.write_text("\n".join(lines) + "\n")
  config = tiny_config(path, early_stopping_metric="RMSE")
  config.task, config.data.format, config.model.name = "rating", "movielens", "din"
  with pytest.raises(ValueError, match=r"u\.data: 1 of 120 ratings lie outside data\.rating_range="
                                       r"\(0\.5, 5\).*observed range \[-1000, 5\]"):
    loop.train_and_evaluate(config, tmp_path / "run")


# ----------------------------------------------------------------------------
# Run identity.


def test_changed_hyperparameters_are_refused_and_results_kept(run_copy):
  workdir, results = run_copy
  before = (workdir / "results.json").read_bytes()
  config = tiny_config(pathlib.Path(results["data"]["source"]), learning_rate=1e-2)
  config.seed = 3
  with pytest.raises(workdir_lib.RunMismatchError) as e:
    loop.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert "config train.learning_rate: 0.005 in the workdir, 0.01 now" in message
  assert "config seed: 0 in the workdir, 3 now" in message and "--force_resume" in message
  assert (workdir / "results.json").read_bytes() == before


def test_force_resume_records_the_changes(run_copy):
  workdir, results = run_copy
  config = tiny_config(pathlib.Path(results["data"]["source"]), patience=9)
  again = loop.train_and_evaluate(config, workdir, force_resume=True)
  assert again["test"] == results["test"]  # the run had finished: nothing trained again
  assert "config train.patience: 6 in the workdir, 9 now" in again["forced_changes"][0]["changes"]
  recorded = json.loads((workdir / "run.json").read_text())
  assert recorded["config"]["train.patience"] == 9 and len(recorded["forced_changes"]) == 1
  loop.train_and_evaluate(config, workdir)  # the new identity is the workdir's now


def test_settings_that_cannot_change_results_are_accepted(run_copy):
  workdir, results = run_copy
  config = tiny_config(pathlib.Path(results["data"]["source"]), log_every_steps=7, progress_bar=True)
  config.eval.batch_size = 64
  assert loop.train_and_evaluate(config, workdir)["test"] == results["test"]


def test_changed_data_is_refused(data_file, tmp_path, caplog):
  data = tmp_path / "seqs.txt"
  shutil.copyfile(data_file, data)
  loop.train_and_evaluate(tiny_config(data, num_epochs=1), tmp_path / "run")
  os.utime(data, (time.time() + 5, time.time() + 5))  # touched, same bytes: a warning only
  with caplog.at_level(logging.WARNING, logger=workdir_lib.__name__):
    loop.train_and_evaluate(tiny_config(data, num_epochs=1), tmp_path / "run")
  assert "was modified since (same size)" in caplog.text
  lines = data.read_text().splitlines()
  data.write_text("\n".join(lines[: int(len(lines) * 0.8)]) + "\n")  # 20% of the users removed
  with pytest.raises(workdir_lib.RunMismatchError, match="data file .*seqs.txt.*bytes") as e:
    loop.train_and_evaluate(tiny_config(data, num_epochs=1), tmp_path / "run")
  assert "processed data differs" in str(e.value) and "users 96 -> 76" in str(e.value)


def test_workdir_without_identity_is_refused(run_copy):
  workdir, results = run_copy
  (workdir / "run.json").unlink()
  config = tiny_config(pathlib.Path(results["data"]["source"]))
  with pytest.raises(workdir_lib.RunMismatchError, match="no run.json"):
    loop.train_and_evaluate(config, workdir)
  assert loop.train_and_evaluate(config, workdir, force_resume=True)["test"] == results["test"]


# ----------------------------------------------------------------------------
# The workdir lock.


def _python(code: str, **kwargs) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  holder = _python(f"""
      import os
      from recattn_jax.training.workdir import WorkdirLock
      WorkdirLock({str(tmp_path)!r}).acquire()
      print(os.getpid(), flush=True)
      os._exit(0)  # dies holding it, as a crash would
      """)
  pid = holder.stdout.readline().strip()
  assert holder.wait(60) == 0 and (tmp_path / "run.lock").exists()
  with caplog.at_level(logging.WARNING, logger=workdir_lib.__name__):
    with workdir_lib.WorkdirLock(tmp_path):
      assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
  assert f"stale lock of pid {pid}" in caplog.text
  assert not (tmp_path / "run.lock").exists()


def test_live_lock_is_refused(tmp_path):
  holder = _python(f"""
      import sys, time
      from recattn_jax.training.workdir import WorkdirLock
      with WorkdirLock({str(tmp_path)!r}):
        print("locked", flush=True)
        sys.stdin.readline()
      """, stdin=subprocess.PIPE)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lib.WorkdirLockedError, match=f"pid {holder.pid} on "):
      workdir_lib.WorkdirLock(tmp_path).acquire()
  finally:
    holder.stdin.close()
    holder.wait(60)
  with workdir_lib.WorkdirLock(tmp_path):  # released by its holder
    pass


# ----------------------------------------------------------------------------
# SIGTERM / SIGINT to a real training process.

_SLOW_TRAINING = """
import pathlib, sys, time
from absl import app
from recattn_jax import train
from recattn_jax.training import tasks

real = tasks.make_train_step

def slow_make_train_step(*args, **kwargs):
  step = real(*args, **kwargs)
  def slow_step(state, batch):
    time.sleep(0.15)  # time for the test to send its signal mid-training
    return step(state, batch)
  return slow_step

tasks.make_train_step = slow_make_train_step
sys.argv = ["train", "--config", sys.argv[1], "--workdir", sys.argv[2]]
app.run(train.main)
"""


def _start_slow_trainer(data_file: pathlib.Path, tmp_path: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path]:
  config_file = tmp_path / "tiny.py"
  config_file.write_text(textwrap.dedent(f"""
      import pathlib, sys
      sys.path.insert(0, {str(REPO)!r})
      from tests.helpers import tiny_config
      def get_config():
        return tiny_config(pathlib.Path({str(data_file)!r}))
      """))
  workdir = tmp_path / "run"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}  # as in-process
  trainer = subprocess.Popen([sys.executable, "-c", _SLOW_TRAINING, str(config_file), str(workdir)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  return trainer, workdir


def _wait_for_step(trainer: subprocess.Popen, workdir: pathlib.Path, step: int, on_progress=None):
  """Returns once the trainer logged `step`; `on_progress()` runs once, at its first logged step."""
  deadline = time.time() + 240
  while time.time() < deadline and trainer.poll() is None:
    steps = [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] \
        if (workdir / "metrics.jsonl").exists() else []
    if steps and on_progress is not None:
      on_progress()
      on_progress = None
    if steps and max(steps) >= step:
      return
    time.sleep(0.05)
  raise AssertionError(f"the trainer never reached step {step}: {trainer.communicate(timeout=60)}")


def _assert_resumes_to(uninterrupted: dict, data_file: pathlib.Path, workdir: pathlib.Path):
  resumed = loop.train_and_evaluate(tiny_config(data_file), workdir)
  assert resumed["test"] == uninterrupted["test"]
  assert resumed["best_step"] == uninterrupted["best_step"]
  steps = [r["step"] for r in read_metrics(workdir) if r["split"] == "train"]
  assert steps == list(range(1, uninterrupted["steps_run"] + 1))  # each step logged once


# SIGTERM is a preemption notice: saved, so a clean exit (0); Ctrl-C reports as a shell would.
@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_saves_and_the_rerun_resumes_to_the_same_results(finished_run, data_file, tmp_path,
                                                                signum, exit_code):
  _, uninterrupted = finished_run
  trainer, workdir = _start_slow_trainer(data_file, tmp_path)
  refused = []

  def second_trainer():  # in the same workdir, while the first trains: refused
    with pytest.raises(workdir_lib.WorkdirLockedError, match=f"pid {trainer.pid}"):
      loop.train_and_evaluate(tiny_config(data_file), workdir)
    refused.append(True)

  try:
    _wait_for_step(trainer, workdir, 6, on_progress=second_trainer)
    trainer.send_signal(signum)
    _, stderr = trainer.communicate(timeout=120)
  finally:
    if trainer.poll() is None:
      trainer.kill()
  assert refused
  assert trainer.returncode == exit_code, stderr[-3000:]
  assert "interrupted by" in stderr and signal.Signals(signum).name in stderr
  interrupted = [r for r in read_metrics(workdir) if r["split"] == "interrupted"]
  assert len(interrupted) == 1 and interrupted[0]["signal"] == signal.Signals(signum).name
  saved = max(int(p.name) for p in (workdir / "checkpoints" / "latest").iterdir() if p.name.isdigit())
  assert saved == interrupted[0]["step"] < uninterrupted["steps_run"]
  assert not (workdir / "run.lock").exists() and not (workdir / "results.json").exists()
  _assert_resumes_to(uninterrupted, data_file, workdir)


def test_sigkill_mid_training_resumes_to_the_same_results(finished_run, data_file, tmp_path):
  _, uninterrupted = finished_run
  trainer, workdir = _start_slow_trainer(data_file, tmp_path)
  try:
    _wait_for_step(trainer, workdir, 9)  # just after the evaluation (and saves) of step 8
    trainer.kill()
    trainer.communicate(timeout=60)
  finally:
    if trainer.poll() is None:
      trainer.kill()
  assert trainer.returncode == -signal.SIGKILL
  assert (workdir / "run.lock").exists()  # left behind; stale now
  _assert_resumes_to(uninterrupted, data_file, workdir)


def test_a_field_newer_than_the_run_resumes_at_its_default_only(run_copy):
  workdir, results = run_copy
  config = tiny_config(pathlib.Path(results["data"]["source"]))
  recorded = json.loads((workdir / "run.json").read_text())
  del recorded["config"]["train.lr_batch_scaling"]  # as written before the field existed
  (workdir / "run.json").write_text(json.dumps(recorded))
  assert loop.train_and_evaluate(config, workdir)["test"] == results["test"]
  assert "train.lr_batch_scaling" in json.loads((workdir / "run.json").read_text())["config"]

  recorded = json.loads((workdir / "run.json").read_text())
  del recorded["config"]["train.lr_batch_scaling"]
  (workdir / "run.json").write_text(json.dumps(recorded))
  config.train.lr_batch_scaling = "sqrt"  # not what the old code did
  with pytest.raises(workdir_lib.RunMismatchError,
                     match="config train.lr_batch_scaling: '<absent>' in the workdir, 'sqrt' now"):
    loop.train_and_evaluate(config, workdir)
