"""Meshes, sharding rules and multi-host helpers shared by training and serving.

* `mesh`: the ("data", "model") device mesh from `train.mesh`;
* `rules`: which arrays are sharded how (batch over "data", per-item tables
  by rows over "model", everything else replicated);
* `hosts`: `jax.distributed` start-up, each process's rows of a global batch,
  global arrays from per-process data, and results gathered back to every host.
"""

from recattn_jax.parallel.hosts import (fetch, global_batch, initialize_distributed, is_primary,
                                        process_rows, sync)
from recattn_jax.parallel.mesh import DATA_AXIS, MODEL_AXIS, make_mesh, mesh_shape
from recattn_jax.parallel.rules import (SHARDING_RULES, batch_sharding, replicated, shard_spec,
                                        tree_shardings)

__all__ = ["DATA_AXIS", "MODEL_AXIS", "SHARDING_RULES", "batch_sharding", "fetch", "global_batch",
           "initialize_distributed", "is_primary", "make_mesh", "mesh_shape", "process_rows",
           "replicated", "shard_spec", "sync", "tree_shardings"]
