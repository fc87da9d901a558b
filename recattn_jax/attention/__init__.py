"""One attention API for every encoder and matcher in the library.

    out = attend(q, k, v, mask=MaskSpec(causal=True, kv_valid=valid))

Shapes follow `jax.nn.dot_product_attention`: q [B, Lq, H, D], k and v
[B, Lk, H, D], output [B, Lq, H, D]. Query rows that may attend to no key
return zeros (never NaN). See docs/attention.md for the engines and `auto`.
"""

from recattn_jax.attention.api import (IMPLEMENTATIONS, KINDS, POINTWISE_IMPLEMENTATIONS,
                                       AttentionFn, attend, attention_fn, select_implementation)
from recattn_jax.attention.blockwise import blockwise_attention, blockwise_stats
from recattn_jax.attention.mask import BlockSparse, MaskSpec, dense_mask, visible_rows
from recattn_jax.attention.pointwise import pointwise_normalizer

__all__ = [
    "IMPLEMENTATIONS", "KINDS", "POINTWISE_IMPLEMENTATIONS", "AttentionFn", "BlockSparse", "MaskSpec",
    "attend", "attention_fn", "blockwise_attention", "blockwise_stats", "dense_mask", "pointwise_normalizer",
    "select_implementation", "visible_rows",
]
