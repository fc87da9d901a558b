"""Serving a trained run: bundles, `Recommender`, sessions, batch scoring, export and HTTP."""

from recattn_jax.serving.lists import Recommendation, UnknownIdError
from recattn_jax.serving.pointwise import CandidateScorer, load
from recattn_jax.serving.recommender import Recommender
from recattn_jax.serving.session import Session
from recattn_jax.training.bundle import BundleError

__all__ = ["BundleError", "CandidateScorer", "load", "Recommendation", "Recommender", "Session", "UnknownIdError"]
