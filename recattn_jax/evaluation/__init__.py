"""Full-ranking evaluation of next-item recommenders."""

from recattn_jax.evaluation.ranking import TIE_MODES, metrics_from_ranks, target_ranks

__all__ = ["TIE_MODES", "metrics_from_ranks", "target_ranks"]
