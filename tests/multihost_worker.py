"""One process of a multi-process run: `python -m tests.multihost_worker PORT PID N DATA WORKDIR MESH`.

Each process gets 2 fake CPU devices; jax.distributed joins them.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

from recattn_jax.parallel import initialize_distributed  # noqa: E402
from recattn_jax.training import loop  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402


def main(port, process_id, num_processes, data, workdir, mesh):
  initialize_distributed(f"127.0.0.1:{port}", int(num_processes), int(process_id))
  config = tiny_config(data, mesh=json.loads(mesh))
  loop.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  main(*sys.argv[1:])
