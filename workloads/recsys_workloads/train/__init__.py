"""Training, evaluation and export of the two-tower retriever and the ranker (``python -m
recsys_workloads.train --config PATH``; the config is documented in ``config.py``)."""
