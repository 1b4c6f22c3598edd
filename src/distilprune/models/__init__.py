"""Model resolution (aliases, local dirs, hub IDs), loading, tiny test models and students."""

from distilprune.models.loading import count_parameters, load_classifier, load_tokenizer
from distilprune.models.registry import ALIASES, resolve_model

__all__ = ["ALIASES", "count_parameters", "load_classifier", "load_tokenizer", "resolve_model"]
