"""Command line: `python -m recattn_jax.plot WORKDIR [--out FILE.png] [--metric NDCG@10]`.

Draws a run's training loss and validation curves, or, for a study's workdir
(`python -m recattn_jax.tune`), every trial's validation curve and the best
value so far, to a PNG (default `WORKDIR/curves.png`).
"""

import sys

from absl import app, flags

from recattn_jax.plots import plot

_OUT = flags.DEFINE_string("out", None, "The PNG to write (default: WORKDIR/curves.png).")
_METRIC = flags.DEFINE_string("metric", None, "The validation metric (default: the run's "
                              "train.early_stopping_metric).")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m recattn_jax.plot WORKDIR [--out FILE.png] [--metric NAME]")
  try:
    out = plot(argv[1], _OUT.value, _METRIC.value)
  except (FileNotFoundError, ImportError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(out)


if __name__ == "__main__":
  app.run(main)
