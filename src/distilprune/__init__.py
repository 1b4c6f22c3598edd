"""distilprune: make transformer text classifiers small and fast on CPUs."""

__version__ = "0.1.0"
