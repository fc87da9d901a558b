"""benchmarks/seeds.py: several seeds of one config, recorded so that a later invocation adds the rest."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import tiny_config

ROOT = pathlib.Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import seeds  # noqa: E402

CONFIG_FILE = '''
import pathlib
from tests.helpers import tiny_config

def get_config():
  return tiny_config(pathlib.Path({data!r}), num_epochs=2)
'''


def test_seeds_are_recorded_and_not_run_twice(data_file, tmp_path):
  config_file = tmp_path / "tiny_seeds.py"
  config_file.write_text(CONFIG_FILE.format(data=str(data_file)))
  workdir, out = tmp_path / "runs", tmp_path / "seeds.json"
  record = seeds.run_seeds(tiny_config(data_file, num_epochs=2), [0, 1], workdir, out,
                           source=str(config_file))
  assert json.loads(out.read_text()) == record and sorted(record["seeds"]) == ["0", "1"]
  for seed, row in record["seeds"].items():
    results = json.loads((workdir / f"seed_{seed}" / "results.json").read_text())
    assert results["config"]["seed"] == int(seed)
    assert row["test"] == results["test"]["seen_excluded"] and row["valid"] == results["valid"]["seen_excluded"]
  assert record["seeds"]["0"]["valid"] != record["seeds"]["1"]["valid"]  # the seed changes the run

  # The command adds nothing for recorded seeds (the runs are gone, so any training would show)
  # and prints each seed with the mean and sample std.
  for path in workdir.glob("seed_*/**/*"):
    if path.is_file():
      path.unlink()
  command = [sys.executable, "benchmarks/seeds.py", "--config", str(config_file), "--seeds=0,1",
             "--workdir", str(workdir), "--out", str(out)]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the config file imports tests.helpers
  done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert not any(p.is_file() for p in workdir.glob("seed_*/**/*"))
  ndcg = [record["seeds"][s]["test"]["NDCG@10"] for s in ("0", "1")]
  mean_line = next(line for line in done.stdout.splitlines() if line.startswith("mean"))
  assert float(mean_line.split()[-1]) == pytest.approx(sum(ndcg) / 2, abs=1e-4)
  assert any(line.startswith("std") for line in done.stdout.splitlines())

  # Another config is refused, naming the field.
  refused = subprocess.run(command + ["--config.train.learning_rate=0.001"], capture_output=True,
                           text=True, timeout=300, cwd=ROOT, env=env)
  assert refused.returncode == 1 and "train.learning_rate" in refused.stderr
