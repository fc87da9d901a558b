"""Command line: top-K lists of many users, to Parquet.

    python -m recattn_jax.recommend --bundle runs/sasrec_ml100k/bundle --users all --k 100 \
        --out topk.parquet
    python -m recattn_jax.recommend --bundle B --histories requests.jsonl --k 20 --out topk.parquet

`--users` takes "all" (every user of the run), a comma-separated list of
user ids or "@FILE" (one id per line); `--histories` a JSON-lines file of
{"id": ..., "history": [item ids], "timestamps": [...]} (see
`serving.batch`). Output rows: id, rank, item, score, source; original ids
throughout. Memory stays constant in the number of users.
"""

import pathlib
import logging
import sys

from absl import app, flags

from recattn_jax.serving import BundleError, Recommender, UnknownIdError
from recattn_jax.serving.batch import count_lines, read_histories, write_top_k

_BUNDLE = flags.DEFINE_string("bundle", None, "A model bundle (a run's <workdir>/bundle).", required=True)
_USERS = flags.DEFINE_string("users", None, '"all", comma-separated user ids, or @FILE.')
_HISTORIES = flags.DEFINE_string("histories", None, "A JSON-lines file of histories.")
_K = flags.DEFINE_integer("k", 100, "List length.")
_OUT = flags.DEFINE_string("out", "topk.parquet", "The Parquet file to write.")
_EXCLUDE_SEEN = flags.DEFINE_bool("exclude_seen", True, "Never recommend an item of the history.")
_UNKNOWN = flags.DEFINE_enum("unknown", "error", ["error", "drop"],
                             "Unknown item ids in --histories: fail naming them, or drop them.")


def _user_ids(rec, spec: str) -> list[str]:
  if spec == "all":
    return list(rec.users.ids)
  if spec.startswith("@"):
    path = pathlib.Path(spec[1:])
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  return [u.strip() for u in spec.split(",") if u.strip()]


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every checkpoint it opens
  if (_USERS.value is None) == (_HISTORIES.value is None):
    sys.exit("give exactly one of --users and --histories")
  try:
    rec = Recommender.load(_BUNDLE.value)
    if _USERS.value is not None:
      users = _user_ids(rec, _USERS.value)
      rows = write_top_k(rec, _OUT.value, k=_K.value, users=users, total=len(users),
                         exclude_seen=_EXCLUDE_SEEN.value)
    else:
      rows = write_top_k(rec, _OUT.value, k=_K.value, histories=read_histories(_HISTORIES.value),
                         total=count_lines(_HISTORIES.value), exclude_seen=_EXCLUDE_SEEN.value,
                         unknown=_UNKNOWN.value)
  except (BundleError, UnknownIdError, ValueError, FileNotFoundError) as e:
    print(f"error ({type(e).__name__}): {e}", file=sys.stderr)
    sys.exit(1)
  print(f"{rows} rows written to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
