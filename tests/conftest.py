"""Every test process sees 4 CPU devices, so data-parallel code paths run for real."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import pathlib  # noqa: E402

import pytest  # noqa: E402

from recattn_jax.config import SHARED_DATA  # noqa: E402


@pytest.fixture
def shared_data() -> pathlib.Path:
  """`../shared/data` beside the checkout (or $RECATTN_SHARED_DATA); skip cleanly without it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} is absent")
  return SHARED_DATA
