"""One attention API for every encoder and matcher in the library.

    out = attend(q, k, v, mask=MaskSpec(causal=True, kv_valid=valid))

Shapes follow `jax.nn.dot_product_attention`: q [B, Lq, H, D], k and v
[B, Lk, H, D], output [B, Lq, H, D]. Query rows that may attend to no key
return zeros (never NaN).
"""

from recattn_jax.attention.api import IMPLEMENTATIONS, attend
from recattn_jax.attention.mask import MaskSpec, dense_mask

__all__ = ["IMPLEMENTATIONS", "MaskSpec", "attend", "dense_mask"]
