"""Offline datasets in the project's parquet layout (see :mod:`.layout`): MovieLens-100k and a
scalable synthetic world. Both expose ``write_dataset(out, ...) -> DatasetPaths``."""

from recsys_workloads.datasets.layout import DatasetPaths

__all__ = ["DatasetPaths"]
