"""Data: reading tables, tweet preprocessing, splits, tokenisation and batching."""

from distilprune.data.loading import TextTable, class_balance, load_table

__all__ = ["TextTable", "class_balance", "load_table"]
