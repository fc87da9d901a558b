"""The Colab notebooks under colab/ run end to end, on CPU, in their smoke setting.

Each notebook is executed by nbclient in a fresh IPython kernel of this very
interpreter (a kernel spec written to a temporary folder runs
`sys.executable -m ipykernel_launcher`, so no installed kernel spec is needed
and none elsewhere on the machine is picked up), with RECATTN_NOTEBOOK_SMOKE=1
(tiny sizes), JAX on CPU, no XLA_FLAGS of the test process (the notebooks set
their own) and a temporary working directory. Any cell error fails the test
with the cell and its traceback.

    .venv/bin/python -m pytest -q tests/test_notebooks.py
"""

import json
import os
import pathlib
import re
import sys
import time

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = ("quickstart", "attention", "multi_device")
BADGE = "https://colab.research.google.com/github/recattn/recattn_jax/blob/main/colab/{}.ipynb"
INSTALL = '"recattn_jax @ git+https://github.com/recattn/recattn_jax"'
KERNEL = "recattn-notebook-test"
SMOKE_SECONDS = 300  # each takes well under 90 s on 2 CPU cores; far more means SMOKE was ignored


def _read(name: str):
  return nbformat.read(COLAB / f"{name}.ipynb", as_version=4)


def test_every_notebook_is_tested():
  assert sorted(p.stem for p in COLAB.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_layout(name):
  """Badge first, the conditional install, one `parameters` cell with the SMOKE switch, no outputs."""
  nb = _read(name)
  nbformat.validate(nb)
  first = nb.cells[0]
  assert first.cell_type == "markdown" and BADGE.format(name) in first.source
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert any("except ImportError" in c.source and INSTALL in c.source for c in code)
  parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(parameters) == 1
  assert 'SMOKE = os.environ.get("RECATTN_NOTEBOOK_SMOKE") == "1"' in parameters[0].source
  assert any("jax.default_backend()" in c.source for c in code)
  for cell in code:
    assert not cell.outputs and cell.execution_count is None, f"{name}: commit notebooks without outputs"


def _kernel_manager(spec_dir: pathlib.Path) -> AsyncKernelManager:
  """A kernel of this interpreter, whatever kernel specs the machine has installed."""
  kernel = spec_dir / KERNEL
  kernel.mkdir(parents=True)
  (kernel / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "recattn_jax notebook test", "language": "python",
  }))
  return AsyncKernelManager(kernel_name=KERNEL,
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]))


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
  nb = _read(name)
  workdir = tmp_path / "cwd"
  workdir.mkdir()
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # conftest sets 4 devices
  env.update(RECATTN_NOTEBOOK_SMOKE="1", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  client = NotebookClient(nb, km=_kernel_manager(tmp_path / "kernels"), timeout=600,
                          startup_timeout=120, resources={"metadata": {"path": str(workdir)}})
  start = time.perf_counter()
  try:
    client.execute(env=env, cleanup_kc=True)  # the kernel is shut down after the last cell
  except CellExecutionError as e:
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # the traceback without terminal colours
    pytest.fail(f"colab/{name}.ipynb: a cell failed:\n{message}", pytrace=False)
  seconds = time.perf_counter() - start
  print(f"colab/{name}.ipynb ran in {seconds:.1f} s")
  assert seconds < SMOKE_SECONDS, f"colab/{name}.ipynb took {seconds:.0f} s in the smoke setting"
