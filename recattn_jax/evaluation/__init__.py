"""Evaluation: full ranking, top-K lists, beyond-accuracy, click and rating metrics."""

from recattn_jax.evaluation.beyond import beyond_accuracy_report
from recattn_jax.evaluation.ctr import auc, ctr_metrics, gauc, log_loss, mae, rating_metrics, rmse
from recattn_jax.evaluation.ranking import TIE_MODES, metrics_from_ranks, target_ranks
from recattn_jax.evaluation.topk import recommend, top_k_items

__all__ = ["TIE_MODES", "auc", "beyond_accuracy_report", "ctr_metrics", "gauc", "log_loss", "mae",
           "metrics_from_ranks", "rating_metrics", "recommend", "rmse", "target_ranks", "top_k_items"]
