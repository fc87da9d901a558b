"""Several processes (hosts), each with its own devices, training as one.

`initialize_distributed` starts `jax.distributed` from arguments, from the
environment (`RECATTN_COORDINATOR_ADDRESS`, `RECATTN_NUM_PROCESSES`,
`RECATTN_PROCESS_ID`), or with no address on a multi-host Cloud TPU slice,
where JAX finds the coordinator itself. After it, `jax.devices()` lists every
host's devices and the mesh spans them all.

Every process runs the same deterministic input pipeline and feeds only the
rows of each global batch that its devices hold (`process_rows`);
`global_batch` assembles the global arrays from them
(`jax.make_array_from_process_local_data`), and `fetch` brings a result
sharded over hosts back whole to every host (evaluation combines ranks so).
Only the primary process (index 0) writes metrics and files.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from recattn_jax.parallel.mesh import DATA_AXIS
from recattn_jax.parallel.rules import batch_sharding

log = logging.getLogger(__name__)
ENV_PREFIX = "RECATTN_"


def _multi_host_tpu() -> bool:
  """A Cloud TPU VM of a slice with several hosts (the TPU runtime names the workers)."""
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts `jax.distributed` when several processes are configured; True if it did.

  Arguments left None come from RECATTN_COORDINATOR_ADDRESS, RECATTN_NUM_PROCESSES
  and RECATTN_PROCESS_ID. Without an address, a multi-host Cloud TPU slice
  is detected (TPU_WORKER_HOSTNAMES) and JAX finds the rest; otherwise the run
  is single-process and nothing starts.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get(ENV_PREFIX + "COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get(ENV_PREFIX + "NUM_PROCESSES"):
    num_processes = int(env[ENV_PREFIX + "NUM_PROCESSES"])
  if process_id is None and env.get(ENV_PREFIX + "PROCESS_ID"):
    process_id = int(env[ENV_PREFIX + "PROCESS_ID"])
  if coordinator_address is None:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise ValueError("num_processes/process_id are set but no coordinator address "
                       f"(--coordinator_address or ${ENV_PREFIX}COORDINATOR_ADDRESS)")
    if not _multi_host_tpu():
      return False
    jax.distributed.initialize()
  else:
    if num_processes is None or process_id is None:
      raise ValueError(f"coordinator address {coordinator_address!r} needs the number of processes "
                       f"and this process's id (--num_processes/--process_id or "
                       f"${ENV_PREFIX}NUM_PROCESSES/${ENV_PREFIX}PROCESS_ID)")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id={process_id} must lie in 0..{num_processes - 1}")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_primary() -> bool:
  """The process that writes metrics, results and other files for the run."""
  return jax.process_index() == 0


def process_rows(mesh: Mesh, global_rows: int) -> slice:
  """The rows of a [global_rows, ...] batch that this process's devices hold (data-axis blocks)."""
  data_size = mesh.shape[DATA_AXIS]
  if global_rows % data_size:
    raise ValueError(f"a batch of {global_rows} rows does not divide over the {data_size} "
                     f"data-parallel groups of train.mesh {dict(mesh.shape)}")
  axis = mesh.axis_names.index(DATA_AXIS)
  mine = np.vectorize(lambda d: d.process_index == jax.process_index())(mesh.devices)
  blocks = np.flatnonzero(mine.any(axis=1 - axis))
  if not len(blocks) or np.any(np.diff(blocks) != 1):
    raise ValueError(f"process {jax.process_index()}'s devices do not form one contiguous block "
                     "of the data axis")
  per_block = global_rows // data_size
  return slice(int(blocks[0]) * per_block, (int(blocks[-1]) + 1) * per_block)


def global_batch(local: dict, mesh: Mesh, global_rows: int) -> dict:
  """Global arrays split over "data" from this process's rows (`process_rows`) of each."""
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(
              sharding, np.asarray(value), (global_rows, *np.shape(value)[1:]))
          for key, value in local.items()}


def fetch(x: jax.Array) -> np.ndarray:
  """A global array, whole, as numpy on every process."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync(name: str) -> None:
  """Waits until every process reaches this point (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
