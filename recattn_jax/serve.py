"""Command line: `python -m recattn_jax.serve --bundle runs/sasrec/bundle [--port 8000]`.

Serves the bundle's ranking model over HTTP (`recattn_jax.serving.http`: POST
/recommend, /sessions/{id}/events, GET /healthz, /metrics, ...). One process,
one worker: the model lives in it, and concurrent requests are micro-batched
rather than spread over processes. Binds 127.0.0.1 unless --host says otherwise.
Needs the serve extra: pip install 'recattn_jax[serve]'.
"""

import logging
import sys

from absl import app, flags

from recattn_jax.serving import BundleError, Recommender

try:  # the serve extra
  import uvicorn
  from recattn_jax.serving import http
except ImportError as missing:
  uvicorn = http = None
  _IMPORT_ERROR = missing

_BUNDLE = flags.DEFINE_string("bundle", None, "The bundle directory of a finished ranking run "
                              "(<workdir>/bundle).", required=True)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 serves other machines.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.", lower_bound=0, upper_bound=65535)
_MAX_BATCH = flags.DEFINE_integer("max_batch", 64, "Most /recommend requests scored in one call.",
                                  lower_bound=1)
_BATCH_WINDOW_MS = flags.DEFINE_float("batch_window_ms", 2.0, "How long a batch waits for more "
                                      "requests after its first (ms).", lower_bound=0.0)
_NO_WARMUP = flags.DEFINE_bool("no_warmup", False, "Start without compiling the common shapes "
                               "first (the first requests then compile them).")
_LOG_LEVEL = flags.DEFINE_enum("log_level", "info", ["debug", "info", "warning", "error"],
                               "Server log level.")

_MISSING = "the HTTP service needs starlette and uvicorn: pip install 'recattn_jax[serve]'"


def main(argv):
  del argv
  if http is None:
    print(f"error: {_MISSING} ({_IMPORT_ERROR})", file=sys.stderr)
    sys.exit(1)

  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.basicConfig(level=_LOG_LEVEL.value.upper(), format="%(asctime)s %(name)s: %(message)s")
  try:
    rec = Recommender.load(_BUNDLE.value)
  except (BundleError, FileNotFoundError) as e:
    print(f"error ({type(e).__name__}): {e}", file=sys.stderr)
    sys.exit(1)
  service = http.build_app(rec, max_batch=_MAX_BATCH.value,
                           batch_window_ms=_BATCH_WINDOW_MS.value, warmup=not _NO_WARMUP.value)
  print(f"serving {rec.config.model.name} ({rec.num_items} items) from {_BUNDLE.value} at "
        f"http://{_HOST.value}:{_PORT.value}", file=sys.stderr)
  uvicorn.run(service, host=_HOST.value, port=_PORT.value, workers=1, log_level=_LOG_LEVEL.value)


if __name__ == "__main__":
  app.run(main)
