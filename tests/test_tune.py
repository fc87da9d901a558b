"""Tuning: search spaces, a study end to end on tiny data, resume, budget, crashes, plots."""

import dataclasses
import json
import pathlib
import shutil

import optuna
import pytest

from recattn_jax.training import loop, tasks
from recattn_jax.training.workdir import RunMismatchError, config_fingerprint
from recattn_jax.tuning import Choice, Float, Int, load_config, space as spaces
from recattn_jax.tuning.study import StudyError, load_study, parse_duration, run_study, trial_workdir

CONFIG_FILE = '''
import pathlib
from tests.helpers import tiny_config

def get_config():
  config = tiny_config(pathlib.Path({data!r}), num_epochs=2)
  config.train.log_every_steps = 4
  return config
'''


def _space(high=2e-2):
  return {"train.learning_rate": Float(1e-3, high, log=True), "model.sasrec.dropout_rate": Float(0.0, 0.4)}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, data_file):
  path = tmp_path_factory.mktemp("tune") / "tiny_tune.py"
  path.write_text(CONFIG_FILE.format(data=str(data_file)))
  return path


@pytest.fixture(scope="module")
def study(tmp_path_factory, config_file):
  """A 3-trial study, recording which splits every evaluation touched."""
  workdir = tmp_path_factory.mktemp("study") / "study"
  splits = []
  real_build_job = tasks.build_job

  def recording_build_job(*args, **kwargs):
    job = real_build_job(*args, **kwargs)
    evaluate = job.evaluate

    def spy(params, split):
      splits.append(split)
      return evaluate(params, split)
    return dataclasses.replace(job, evaluate=spy)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tasks, "build_job", recording_build_job)
    patch.setattr(loop, "build_job", recording_build_job)
    result = run_study(load_config(str(config_file)), _space(), workdir, config_source=str(config_file),
                       max_trials=3, startup_trials=2, pruner="none")
  return workdir, result, splits


def test_space_samples_named_choices_and_reproduces_the_config():
  config = load_config("sasrec_ml100k")
  space = {"train.learning_rate": Float(1e-4, 1e-2, log=True),
           "model.sasrec.num_layers": Int(1, 4),
           "loss": Choice({"softmax": {"train.loss.name": "softmax"},
                           "sampled": {"train.loss.name": "sampled_softmax",
                                       "train.loss.sampled_softmax.num_negatives": Int(64, 1024)}})}
  chosen = spaces.sample(space, optuna.trial.FixedTrial(
      {"train.learning_rate": 3e-3, "model.sasrec.num_layers": 3, "loss": "sampled",
       "train.loss.sampled_softmax.num_negatives": 100}))
  assert chosen == {"train.learning_rate": 3e-3, "model.sasrec.num_layers": 3,
                    "train.loss.name": "sampled_softmax", "train.loss.sampled_softmax.num_negatives": 100}
  tuned = spaces.apply(config, chosen)
  assert tuned.train.loss.name == "sampled_softmax" and tuned.model.sasrec.num_layers == 3
  assert config.train.loss.name == "softmax"  # apply copies
  # The baseline parameters give back the config itself; the softmax option samples no negatives.
  baseline = spaces.baseline_params(space, config)
  assert baseline == {"train.learning_rate": 1e-3, "model.sasrec.num_layers": 2, "loss": "softmax"}
  again = spaces.apply(config, spaces.sample(space, optuna.trial.FixedTrial(baseline)))
  assert config_fingerprint(again) == config_fingerprint(config)
  with pytest.raises(ValueError, match=r"model.sasrec.num_layer'\]"):
    spaces.check_space({"model.sasrec.num_layer": Int(1, 2)}, config)
  with pytest.raises(ValueError, match="named options"):
    Choice({"a": 1})


def test_default_space_fits_each_shipped_model():
  for name in ("sasrec_ml100k", "hstu_ml100k", "bert4rec_ml100k", "sasrec_amazon_toys"):
    config = load_config(name)
    spaces.check_space(spaces.default_space(config), config)


def test_shipped_configs_declare_their_search_space():
  from recattn_jax.tuning import config_module
  for name in ("sasrec_ml100k", "hstu_ml100k", "sasrec_amazon_toys", "sasrec_amazon_sports",
               "hstu_amazon_toys", "hstu_amazon_sports", "sasrec_lastfm"):
    config = load_config(name)
    space = config_module(name).get_search_space(config)
    spaces.check_space(space, config)
    assert "train.learning_rate" in space


def test_a_config_with_an_argument_is_searched_and_written_back(data_file, tmp_path):
  from recattn_jax.tuning import config_module
  from recattn_jax.tuning.study import write_config_file
  source = f"sasrec_auto:{data_file}"
  config = load_config(source)
  space = config_module(source).get_search_space(config)
  spaces.check_space(space, config)
  assert "data.max_len" not in space  # the generated histories fit in 50
  best = spaces.apply(config, spaces.sample(space, optuna.trial.FixedTrial(
      {"train.learning_rate": 3e-3, "train.weight_decay": 0.01, "train.batch_size": 64,
       "model.sasrec.dropout_rate": 0.3, "model.sasrec.embed_dim": 32, "model.sasrec.num_layers": 1,
       "model.sasrec.num_heads": 2, "loss": "softmax", "train.schedule": "cosine"})))
  path = write_config_file(tmp_path / "best_config.py", best, source, doc="best")  # reload-verified
  assert f"load_config({source!r})" in path.read_text()


def test_parse_duration():
  assert parse_duration("90s") == 90 and parse_duration("45m") == 2700
  assert parse_duration("1h30m") == 5400 and parse_duration("120") == 120
  with pytest.raises(ValueError, match="duration"):
    parse_duration("soon")


def test_study_selects_on_validation_and_tests_the_best_once(study, config_file):
  workdir, result, splits = study
  assert len(result.table) == 3 and all(row["state"] == "complete" for row in result.table)
  assert result.table[0]["note"] == "baseline"
  assert result.table[0]["train.learning_rate"] == pytest.approx(5e-3)  # tiny_config's own value
  # Each trial's value is its run's validation metric; no trial run holds test metrics.
  for row in result.table:
    trial_results = json.loads((workdir / row["workdir"] / "results.json").read_text())
    assert row["valid NDCG@10"] == trial_results["valid"]["seen_excluded"]["NDCG@10"]
    assert ("test" in trial_results) == (row["trial"] == result.best_number)
  assert result.best_value == max(row["valid NDCG@10"] for row in result.table)
  # The test split was evaluated exactly once, at the end, for the best trial.
  assert splits.count("test") == 1 and splits[-2:] in (["test", "valid"], ["valid", "test"])
  best = json.loads((workdir / "best_results.json").read_text())
  assert best["trial"] == result.best_number and best["test"] == result.test
  # The written config file reproduces the best trial's config, and runs as a config.
  written = load_config(str(workdir / "best_config.py"))
  assert config_fingerprint(written) == config_fingerprint(result.best_config)
  assert trial_workdir(workdir, written) == workdir / best["workdir"]
  assert (workdir / "trials.csv").read_text().count("\n") == 4
  assert (workdir / best["workdir"] / "bundle").is_dir()
  tracking = json.loads((workdir / best["workdir"] / "config.json").read_text())["train"]["tracking"]
  assert tracking["group"] == workdir.name and tracking["mlflow_uri"] == f"sqlite:///{workdir / 'mlflow.db'}"


def test_continued_study_runs_only_the_missing_trials(study, tmp_path, config_file):
  """The journal alone (no trial runs) continues a study elsewhere, e.g. in the next session."""
  workdir, first, _ = study
  copy = tmp_path / "renamed"
  copy.mkdir()
  for name in ("study.journal", "study.json"):
    shutil.copy(workdir / name, copy / name)
  same = run_study(load_config(str(config_file)), _space(), copy, config_source=str(config_file),
                   max_trials=3, startup_trials=2, pruner="none")
  # Nothing to run; the best trial's missing run is trained again, identically, for its test.
  assert same.trials_this_run == 0 and same.best_number == first.best_number
  assert same.test == first.test
  result = run_study(load_config(str(config_file)), _space(), copy, config_source=str(config_file),
                     max_trials=4, startup_trials=2, pruner="none")
  assert result.trials_this_run == 1 and len(result.table) == 4
  assert [r["valid NDCG@10"] for r in result.table[:3]] == [r["valid NDCG@10"] for r in first.table]


def test_study_of_another_space_is_refused(study, tmp_path, config_file):
  workdir, _, _ = study
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  with pytest.raises(RunMismatchError, match="space"):
    run_study(load_config(str(config_file)), _space(high=5e-2), copy, config_source=str(config_file),
              max_trials=4)


def test_same_seed_same_draws(tmp_path, config_file):
  """The sampler's draws depend on the seed and the finished trials only (checked without training)."""
  def draws(seed):
    study = optuna.create_study(direction="maximize")
    params = []
    for done in range(3):
      study.sampler = optuna.samplers.TPESampler(seed=seed + done, n_startup_trials=2)
      trial = study.ask()
      params.append(spaces.sample(_space(), trial))
      study.tell(trial, params[-1]["train.learning_rate"])  # a deterministic "result"
    return params
  assert draws(0) == draws(0)
  assert draws(0) != draws(1)


def test_budget_stops_the_running_trial_which_resumes(tmp_path, config_file):
  workdir = tmp_path / "study"
  config = load_config(str(config_file))
  result = run_study(config, _space(), workdir, config_source=str(config_file), budget_seconds=0.5)
  assert result.best_number is None and result.table[0]["state"] == "stopped (budget)"
  assert result.table[1]["state"] == "queued" and "resumes trial 0" in result.table[1]["note"]
  run_dir = workdir / result.table[0]["workdir"]
  assert (run_dir / "checkpoints").is_dir() and not (run_dir / "results.json").exists()
  resumed = run_study(config, _space(), workdir, config_source=str(config_file), max_trials=1)
  assert [row["state"] for row in resumed.table] == ["stopped (budget)", "complete"]
  assert resumed.table[1]["workdir"] == result.table[0]["workdir"]  # the same run, resumed
  assert "resumes trial 0" in resumed.table[1]["note"]
  uninterrupted = loop.train_and_evaluate(config, tmp_path / "plain", evaluate_test=False)
  assert resumed.table[1]["valid NDCG@10"] == uninterrupted["valid"]["seen_excluded"]["NDCG@10"]


def test_killed_trial_is_resumed(tmp_path, config_file):
  workdir = tmp_path / "study"
  config = load_config(str(config_file))
  run_study(config, _space(), workdir, config_source=str(config_file), max_trials=1)
  killed = load_study(workdir)
  trial = killed.ask()  # left running, as a SIGKILL would leave it
  spaces.sample(_space(), trial)
  result = run_study(config, _space(), workdir, config_source=str(config_file), max_trials=2)
  assert result.table[1]["state"] == "stopped (killed)"
  assert result.table[2]["state"] == "complete" and "resumes trial 1" in result.table[2]["note"]
  assert result.table[2]["train.learning_rate"] == trial.params["train.learning_rate"]


def test_crashing_trials_are_recorded_then_stop_the_study(tmp_path, config_file):
  space = {"model.sasrec.num_heads": Choice([3])}  # 16 wide: not divisible, every trial fails
  with pytest.raises(StudyError, match="(?s)3 trials in a row crashed.*divisible"):
    run_study(load_config(str(config_file)), space, tmp_path / "s", config_source=str(config_file),
              max_trials=5, baseline=False)
  table = [t for t in load_study(tmp_path / "s").trials]
  assert len(table) == 3 and all("ConfigError" in t.user_attrs["error"] for t in table)
  assert (tmp_path / "s" / "trials.txt").read_text().count("crashed") == 3


def test_plot_draws_a_run_and_a_study(study, finished_run, tmp_path):
  from recattn_jax.plots import plot
  workdir, _, _ = study
  for source, out in ((workdir, tmp_path / "study.png"), (finished_run[0], tmp_path / "run.png")):
    path = plot(source, out)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
  with pytest.raises(FileNotFoundError, match="neither a run"):
    plot(tmp_path, tmp_path / "x.png")
  with pytest.raises(ValueError, match=r"no validation metric 'NDCG@11'; recorded: .*'NDCG@10'"):
    plot(finished_run[0], tmp_path / "x.png", metric="NDCG@11")


def test_tune_and_plot_commands(config_file, tmp_path):
  import subprocess
  import sys
  workdir = tmp_path / "cli"
  done = subprocess.run([sys.executable, "-m", "recattn_jax.tune", "--config", str(config_file),
                         "--workdir", str(workdir), "--trials", "1", "--budget", "10m",
                         "--config.train.num_epochs=1"],
                        capture_output=True, text=True, timeout=600, cwd=pathlib.Path(__file__).parents[1])
  assert done.returncode == 0, done.stderr[-3000:]
  assert "trial 0: NDCG@10" in done.stdout and "best: trial 0" in done.stdout
  assert "computed once" in done.stdout
  # The command-line override is part of the written config.
  assert "config.train.num_epochs = 1" in (workdir / "best_config.py").read_text()
  plotted = subprocess.run([sys.executable, "-m", "recattn_jax.plot", str(workdir)],
                           capture_output=True, text=True, timeout=300)
  assert plotted.returncode == 0, plotted.stderr[-3000:]
  assert (workdir / "curves.png").stat().st_size > 10_000
  bad = subprocess.run([sys.executable, "-m", "recattn_jax.tune", "--config", str(config_file),
                        "--workdir", str(tmp_path / "x"), "--budget", "soon"],
                       capture_output=True, text=True, timeout=300, cwd=pathlib.Path(__file__).parents[1])
  assert bad.returncode == 1 and "--budget='soon'" in bad.stderr


def test_median_pruning_waits_for_a_tenth_of_the_epochs():
  from recattn_jax.tuning.study import _pruner
  config = load_config("sasrec_ml100k")  # 80 epochs, evaluated every 2: judged from epoch 8
  study = optuna.create_study(direction="maximize", pruner=_pruner("median", config))
  for _ in range(2):
    trial = study.ask()
    for epoch in range(2, 20, 2):
      trial.report(0.1, epoch * 100)
    study.tell(trial, 0.1)
  slow = study.ask()
  verdicts = {}
  for epoch in range(2, 20, 2):
    slow.report(0.01, epoch * 100)
    verdicts[epoch] = slow.should_prune()
  assert not any(verdicts[e] for e in (2, 4, 6)) and verdicts[8] and verdicts[10]
