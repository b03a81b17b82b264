"""The training Job's config, parsed: the model is ``recsys_contract.train``'s (the operator
renders it; its module shows an example and what each field means), a problem is bad input
naming the field's JSON path."""

from __future__ import annotations

from typing import Any

from recsys_contract.train import TrainConfig
from recsys_workloads.runtime import parse_config


def parse_train_config(raw: Any) -> TrainConfig:
    """Validate the rendered config; every problem becomes one bad-input message naming fields."""
    return parse_config(TrainConfig, raw, "train config")
