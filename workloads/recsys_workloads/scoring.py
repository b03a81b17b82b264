"""The candidates' final score: the ranker's logit fused with the retrieval score.

One formula, applied by the gateway (stage 3, so the pre-computation Job, which runs the
gateway's stages, stores the same scores) and by the training Job's end-to-end evaluation::

    score = rankerWeight * ranker_logit + retrievalWeight * retrieval_score

``retrieval_score`` is the two-tower's user·item inner product, the score the ANN search
returns with each candidate. Why fuse: the ranker alone, trained against uniform negatives,
orders the two-tower's candidates worse than their retrieval order does (issue 14 §3,
benchmarks/README.md "the served list"); the retrieval score carries what the two-tower
learnt about which of these already-plausible items comes next, and the ranker then only
refines it. The weights are chosen by the training Job on a validation split carved from
its training interactions (``recsys_workloads.train.evaluate.choose_fusion``), from a grid
that includes "ranker only" and "retrieval only", and written with the version's artifacts
(``scoring.json``), so every reader of a version applies the weights it was judged with.

A version exported before this file existed has no ``scoring.json``: it reads as
``RANKER_ONLY``, the scores it was evaluated and gated with, so it serves as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from recsys_workloads.artifact_store import ArtifactReader

#: The model artifact's file holding a version's ``ScoreFusion``.
SCORING_FILE = "scoring.json"


@dataclass(frozen=True)
class ScoreFusion:
    ranker_weight: float
    retrieval_weight: float

    @property
    def uses_ranker(self) -> bool:
        """Whether the ranker's logits matter at all (a retrieval-only version need not call
        the ranker)."""
        return self.ranker_weight != 0.0

    def to_json(self) -> dict[str, Any]:
        return {"rankerWeight": self.ranker_weight, "retrievalWeight": self.retrieval_weight}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ScoreFusion:
        fusion = cls(float(raw["rankerWeight"]), float(raw["retrievalWeight"]))
        if not (np.isfinite(fusion.ranker_weight) and np.isfinite(fusion.retrieval_weight)):
            raise ValueError(f"{SCORING_FILE}: weights must be finite numbers, got {raw}")
        if fusion.ranker_weight < 0 or fusion.retrieval_weight < 0:
            raise ValueError(f"{SCORING_FILE}: weights must not be negative, got {raw}")
        if fusion.ranker_weight == 0 and fusion.retrieval_weight == 0:
            raise ValueError(f"{SCORING_FILE}: at least one weight must be positive, got {raw}")
        return fusion


#: The ranker's logit alone: how every version before ``scoring.json`` was scored.
RANKER_ONLY = ScoreFusion(1.0, 0.0)


def read_fusion(model: ArtifactReader) -> ScoreFusion:
    """A model artifact's fusion; ``RANKER_ONLY`` for a version exported before the file."""
    if model.has(SCORING_FILE):
        return ScoreFusion.from_json(model.read_json(SCORING_FILE))
    return RANKER_ONLY


#: The candidates' retrieval order.
RETRIEVAL_ONLY = ScoreFusion(0.0, 1.0)

#: What the training Job chooses from. Retrieval scores are cosines in [-1, 1] while logits
#: spread over several units, hence the wide range of retrieval weights; ranker only and
#: retrieval only are both candidates, so the chosen list is never worse on validation than
#: either alone.
FUSION_GRID: tuple[ScoreFusion, ...] = (
    RANKER_ONLY,
    *(ScoreFusion(1.0, w) for w in (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)),
    RETRIEVAL_ONLY,
)


def fuse(
    fusion: ScoreFusion,
    ranker_logits: npt.NDArray[Any] | None,
    retrieval_scores: npt.NDArray[Any],
) -> npt.NDArray[np.float32]:
    """Each candidate's final score (float32, as the gateway's scores travel).
    ``ranker_logits`` may be None only when the fusion does not use the ranker."""
    retrieval = np.asarray(retrieval_scores, dtype=np.float64)
    if fusion.uses_ranker:
        if ranker_logits is None:
            raise ValueError("this fusion needs the ranker's logits")
        logits = np.asarray(ranker_logits, dtype=np.float64)
        if logits.shape != retrieval.shape:
            raise ValueError(
                f"{logits.shape[0] if logits.ndim else 0} logits for "
                f"{retrieval.shape[0] if retrieval.ndim else 0} retrieval scores"
            )
        score = fusion.ranker_weight * logits + fusion.retrieval_weight * retrieval
    else:
        score = fusion.retrieval_weight * retrieval
    return np.asarray(score, dtype=np.float32)
