"""Every test process sees 4 CPU devices, so data-parallel code paths run for real."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import pathlib  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

from recattn_jax.config import SHARED_DATA  # noqa: E402
from recattn_jax.training import loop  # noqa: E402
from tests.helpers import tiny_config, write_sequence_file  # noqa: E402


@pytest.fixture
def shared_data() -> pathlib.Path:
  """`../shared/data` beside the checkout (or $RECATTN_SHARED_DATA); skip cleanly without it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} is absent")
  return SHARED_DATA


# A finished tiny run, once per test process (each xdist worker has its own), and a
# fresh copy of it for tests that damage or change it.


@pytest.fixture(scope="session")
def data_file(tmp_path_factory) -> pathlib.Path:
  return write_sequence_file(tmp_path_factory.mktemp("data") / "seqs.txt")


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, data_file):
  workdir = tmp_path_factory.mktemp("run") / "run"
  return workdir, loop.train_and_evaluate(tiny_config(data_file), workdir)


@pytest.fixture
def run_copy(finished_run, tmp_path):
  workdir, results = finished_run
  shutil.copytree(workdir, tmp_path / "copy")
  return tmp_path / "copy", results
