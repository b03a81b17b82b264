"""Online inference: the Triton model repository built from a ModelVersion's artifact, and the
python-backend models it runs (user tower and ranker)."""
