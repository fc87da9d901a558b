"""Command line: (re)write a run's bundle, and export its portable scorer.

    python -m recattn_jax.export --workdir runs/sasrec_ml100k --out my_bundle
    python -m recattn_jax.export --bundle my_bundle --artifact scorer/ --k 100

`--workdir` rebuilds the bundle of a finished run from its config, data and
best checkpoint (default `--out`: <workdir>/bundle). `--artifact` writes the
encoder + scoring + top-K as a serialized `jax.export` (`serving.portable`)
from `--bundle` (or from the bundle just written).
"""

import logging
import sys

from absl import app, flags

from recattn_jax.serving import BundleError, Recommender
from recattn_jax.serving.portable import export_scorer
from recattn_jax.training.checkpoint import CheckpointError
from recattn_jax.training.loop import export_bundle
from recattn_jax.training.workdir import RunMismatchError

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's workdir.")
_OUT = flags.DEFINE_string("out", None, "Where to write the bundle (default <workdir>/bundle).")
_BUNDLE = flags.DEFINE_string("bundle", None, "An existing bundle, for --artifact.")
_ARTIFACT = flags.DEFINE_string("artifact", None, "A folder for the portable jax.export scorer.")
_K = flags.DEFINE_integer("k", 100, "List length of the portable scorer.")


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every checkpoint it opens
  if not (_WORKDIR.value or (_BUNDLE.value and _ARTIFACT.value)):
    sys.exit("give --workdir (write a bundle) and/or --bundle with --artifact")
  try:
    bundle = _BUNDLE.value
    if _WORKDIR.value:
      bundle = export_bundle(_WORKDIR.value, _OUT.value)
      print(f"bundle: {bundle}")
    if _ARTIFACT.value:
      artifact = export_scorer(Recommender.load(bundle), _ARTIFACT.value, k=_K.value)
      print(f"portable scorer: {artifact}")
  except (BundleError, CheckpointError, RunMismatchError, FileNotFoundError, ValueError) as e:
    print(f"error ({type(e).__name__}): {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
