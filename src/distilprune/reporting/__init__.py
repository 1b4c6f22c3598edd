"""What distilprune writes for people to read: markdown tables and number formats
(:mod:`.formatting`), benchmark tables and plots (:mod:`.benchmark`), sparsity heatmaps and tables
(:mod:`.sparsity`), model cards (:mod:`.modelcard`) and the pipeline's report (:mod:`.pipeline`).

Nothing here trains or loads a model: reports are built from saved summaries and records.
"""
