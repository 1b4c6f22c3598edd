"""Task data and metrics: token classification (``ner``), extractive QA (``qa``) and GLUE TSVs (``glue``).

Pure data layer: readers, tokenizer alignment, decoding, scores and prediction writers; no model code.
"""
