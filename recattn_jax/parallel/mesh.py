"""The device mesh: a "data" axis that splits the batch and a "model" axis that splits item tables.

`train.mesh = {"data": -1, "model": 1}` (the default) is plain data parallelism
over every device; `{"data": 2, "model": 4}` on 8 devices makes
2 data-parallel groups, each holding the item table split by rows over 4
devices. One axis may be -1: whatever the other leaves. Devices are the global
ones (all hosts' after `jax.distributed` starts), laid out with
`mesh_utils.create_device_mesh`, which follows the physical topology on TPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

DATA_AXIS = "data"
MODEL_AXIS = "model"
AXES = (DATA_AXIS, MODEL_AXIS)


def mesh_shape(mesh_config: Mapping[str, int] | None, num_devices: int) -> tuple[int, int]:
  """(data, model) sizes for `num_devices` devices; ValueError naming the field at fault."""
  sizes = dict(mesh_config or {DATA_AXIS: -1, MODEL_AXIS: 1})
  unknown = sorted(set(sizes) - set(AXES))
  if unknown:
    raise ValueError(f"train.mesh has unknown axes {unknown}; its axes are {list(AXES)}")
  data, model = (int(sizes.get(axis, 1)) for axis in AXES)
  if data == -1 and model == -1:
    raise ValueError("train.mesh: at most one axis may be -1")
  for axis, size in zip(AXES, (data, model)):
    if size == 0 or size < -1:
      raise ValueError(f"train.mesh.{axis}={size} must be a positive size or -1 (the rest)")
  if data == -1 or model == -1:
    fixed = model if data == -1 else data
    if num_devices % fixed:
      raise ValueError(f"train.mesh.{MODEL_AXIS if data == -1 else DATA_AXIS}={fixed} does not "
                       f"divide the {num_devices} devices")
    data, model = (num_devices // fixed, model) if data == -1 else (data, num_devices // fixed)
  if data * model != num_devices:
    raise ValueError(f"train.mesh {{'data': {data}, 'model': {model}}} needs {data * model} "
                     f"devices, but {num_devices} are in use (train.num_devices=0 takes all)")
  return data, model


def make_mesh(mesh_config: Mapping[str, int] | None = None, num_devices: int = 0,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The ("data", "model") mesh over the first `num_devices` devices (0: all of every host)."""
  devices = list(jax.devices() if devices is None else devices)
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"train.num_devices={num_devices} but only {len(devices)} devices are visible")
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ValueError(f"train.num_devices={num_devices}: with {jax.process_count()} processes "
                       "every device takes part (set train.num_devices=0)")
    devices = devices[:num_devices]
  shape = mesh_shape(mesh_config, len(devices))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, AssertionError, NotImplementedError):  # no topology-aware layout for these
    grid = np.asarray(devices).reshape(shape)
  # Auto axes: XLA propagates shardings from the arguments (the rules) through the step.
  return Mesh(grid, AXES, axis_types=(AxisType.Auto, AxisType.Auto))
