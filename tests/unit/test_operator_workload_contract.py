"""The documents the operator renders are the documents the workloads accept, and back.

The operator and the workloads meet only through the documents of ``recsys_contract``: the
configs in the ConfigMaps the operator renders, the summaries the workloads leave in their
termination messages, and the Redis keys both sides build. Here every config is rendered from
every example a user may apply (and from variants that set what the examples leave out), taken
from the ConfigMap exactly as a pod mounts it, and parsed by the workload's own entry-point
parser; every summary a workload writes is read back the way the operator reads it; and the
keys the gateway reads are the keys the materializer and the history Job write.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from api_objects import model_version, recommender
from pydantic import BaseModel
from redis.crc import key_slot

from recsys_contract import gateway, history, index, materialize, precompute, repository, train
from recsys_contract.keyspace import FeatureViewKeys, GatewayKeys
from recsys_contract.termination import TERMINATION_MESSAGE_LIMIT, Outcome
from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.modelversion import ModelVersion
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import featureview as fv_planner
from recsys_operator.planning import precompute as precompute_planner
from recsys_operator.planning import serving, training
from recsys_operator.planning.jobstatus import JobOutcome, job_outcome, termination_summary
from recsys_operator.planning.modelversion import gate_metrics
from recsys_operator.planning.pods import CONFIG_FILE, recommender_store
from recsys_operator.planning.rollout import Routing
from recsys_workloads.gateway.config import parse_gateway_config
from recsys_workloads.history import parse_history_config
from recsys_workloads.index_build import index_params, parse_index_config
from recsys_workloads.materialize import parse_config as parse_materialize_config
from recsys_workloads.precompute import parse_precompute_config
from recsys_workloads.runtime import BadInputError, run_entrypoint
from recsys_workloads.serving.repository import parse_repository_config
from recsys_workloads.train.config import parse_train_config
from recsys_workloads.train.export import headline_metrics
from recsys_workloads.train.models import EntityShape, ModelShape, Ranker, TwoTower

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
META = {"namespace": "ns", "uid": "u-1", "generation": 1}
OWNER = {"apiVersion": "recsys.dev/v1alpha1", "kind": "X", "metadata": {"name": "o", "uid": "u"}}
SOURCES = training.FeatureSources(
    users_uri="s3://d/users/",
    user_features=["age"],
    items_uri="s3://d/items/",
    item_features=["genres"],
)


def _docs(kind: str) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                doc["metadata"] = {**META, **doc["metadata"]}
                docs.append(doc)
    return docs


def _variant(doc: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> Any:
    out = copy.deepcopy(doc)
    edit(out["spec"])
    return out


def _prefixed_view(spec: dict[str, Any]) -> None:
    redis = spec["onlineStore"]["redis"]
    # a cluster has only database 0
    redis |= {
        "keyPrefix": "team-a:features",
        "mode": "Cluster",
        "url": redis["url"].rsplit("/", 1)[0],
    }


def _everything_set(spec: dict[str, Any]) -> None:
    redis = spec["stores"]["redis"]
    # a cluster has only database 0
    redis |= {"keyPrefix": "team-a:", "mode": "Cluster", "url": redis["url"].rsplit("/", 1)[0]}
    spec["interactions"] |= {"userIdColumn": "uid", "itemIdColumn": "sku", "timestampField": "at"}
    triton = spec.setdefault("serving", {}).setdefault("triton", {})
    triton["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    top_k = spec.get("ranking", {}).get("topK", 20)
    spec["serving"]["precompute"] = {
        "schedule": "@hourly",
        "audience": {"mostActive": "5%", "window": "6h"},
        "topN": top_k,
        "maxAge": "2h",
    }


FEATURE_VIEWS = [
    FeatureView.model_validate(d)
    for d in _docs("FeatureView") + [_variant(d, _prefixed_view) for d in _docs("FeatureView")]
]
#: each example, and the same with a key prefix, its own interactions' column names and a GPU
#: for Triton (it reads the prefixed views)
RECOMMENDERS = [
    Recommender.model_validate(d)
    for d in _docs("Recommender") + [_variant(d, _everything_set) for d in _docs("Recommender")]
]


def _id(obj: FeatureView | Recommender) -> str:
    redis = obj.spec.online_store.redis if isinstance(obj, FeatureView) else obj.spec.stores.redis
    return obj.metadata.name + (f"@{redis.key_prefix}" if redis.key_prefix else "")


def _columns_of(rec: Recommender) -> train.InteractionColumns:
    src = rec.spec.interactions
    return train.InteractionColumns(
        user_id=src.user_id_column,
        item_id=src.item_id_column,
        timestamp=src.timestamp_field,
        label=src.label_column,
    )


def _mv(rec: Recommender, **spec: Any) -> ModelVersion:
    return ModelVersion.model_validate(
        {
            "apiVersion": "recsys.dev/v1alpha1",
            "kind": "ModelVersion",
            "metadata": {**META, "name": f"{rec.metadata.name}-v1"},
            "spec": {"recommenderRef": {"name": rec.metadata.name}, "reason": "Initial", **spec},
        }
    )


def _mounted(config_map: dict[str, Any], file: str = CONFIG_FILE) -> Any:
    """The config as the pod reads it: the JSON file of the ConfigMap."""
    assert config_map["kind"] == "ConfigMap"
    return json.loads(config_map["data"][file])


def _views_of(rec: Recommender) -> dict[str, FeatureView]:
    """The FeatureViews a Recommender names, as the reconciler finds them: the examples' own,
    by their names (the Recommenders with a key prefix read the views with one)."""
    prefixed = bool(rec.spec.stores.redis.key_prefix)
    by_name = {
        fv.metadata.name: fv
        for fv in FEATURE_VIEWS
        if bool(fv.spec.online_store.redis.key_prefix) == prefixed
    }
    refs = rec.spec.feature_views
    names = [r.name for r in [*(refs.user or []), *(refs.item or [])]] if refs else []
    return {n: by_name[n] for n in names if n in by_name}


@dataclass(frozen=True)
class Case:
    """One rendered config: where it came from, the workload's parser, what must hold."""

    id: str
    rendered: Any
    parse: Callable[[Any], BaseModel]
    check: Callable[[Any], None]


def _feature_view_cases(fv: FeatureView) -> Iterator[Case]:
    name, case = fv.metadata.name, _id(fv)
    plan = fv_planner.plan(fv, OWNER, "img")

    def materialized(cfg: materialize.MaterializeConfig) -> None:
        assert cfg.join_key == fv.spec.entity.join_keys[0]
        assert [f.name for f in cfg.features] == [f.name for f in fv.spec.features]
        assert cfg.online_store.redis_url == fv.spec.online_store.redis.url
        assert cfg.keys == FeatureViewKeys.of(
            f"ns.{name}", fv.spec.online_store.redis.key_prefix or None
        )

    yield Case(
        f"materialize/{case}", _mounted(plan.config_map), parse_materialize_config, materialized
    )
    if plan.backfill_config_map is not None:

        def backfill(cfg: materialize.MaterializeConfig) -> None:
            materialized(cfg)
            assert cfg.mode == "full"

        yield Case(
            f"backfill/{case}",
            _mounted(plan.backfill_config_map),
            parse_materialize_config,
            backfill,
        )


def _recommender_cases(rec: Recommender) -> Iterator[Case]:
    name, case = rec.metadata.name, _id(rec)
    overrides = {"training": {"hyperParameters": {"epochs": 3, "learningRate": 0.01}}}
    for mv in (_mv(rec), _mv(rec, **overrides)):
        tag = "overrides" if mv.spec.training else "defaults"
        train_cm = training.training_job(rec, mv, OWNER, "img", SOURCES).config_map

        def trained(cfg: train.TrainConfig, mv: ModelVersion = mv) -> None:
            assert cfg.version == mv.metadata.name
            assert cfg.artifact_uri == training.artifact_uri(rec, mv)
            assert rec.spec.training.evaluation.k in cfg.evaluation.k
            assert cfg.model.embedding_dim == rec.spec.retrieval.embedding_dim
            assert cfg.features.user == ["age"]
            assert cfg.data.users_uri == SOURCES.users_uri
            assert cfg.data.columns == _columns_of(rec)
            if mv.spec.training:
                assert (cfg.training.epochs, cfg.training.learning_rate) == (3, 0.01)

        yield Case(f"train/{case}/{tag}", _mounted(train_cm), parse_train_config, trained)

    mv = _mv(rec)
    index_cm = training.index_job(rec, mv, OWNER, "img").config_map

    def indexed(cfg: index.IndexBuildConfig) -> None:
        assert cfg.model_artifact_uri == training.artifact_uri(rec, mv)
        assert cfg.index_uri == training.index_uri(rec, mv)
        assert cfg.validation.min_recall == rec.spec.retrieval.index.min_recall

    yield Case(f"index/{case}", _mounted(index_cm), parse_index_config, indexed)

    triton_cm = serving.triton_objects(rec, OWNER, "v1", "s3://m/v1", "triton", "img")[0]

    def repository_built(cfg: repository.RepositoryConfig) -> None:
        assert cfg.artifact_uri == "s3://m/v1"
        limits = rec.spec.serving.triton.resources and rec.spec.serving.triton.resources.limits
        assert cfg.device == ("cuda" if limits else "cpu")

    yield Case(f"repository/{case}", _mounted(triton_cm), parse_repository_config, repository_built)

    views = _views_of(rec)
    table = serving.routing_table(
        rec, Routing("v1", "v2", 10, "v0"), {"v1": "s3://i/v1", "v2": None, "v0": "s3://i/v0"}
    )
    gateway_cm = serving.gateway_objects(rec, OWNER, table, "img", views)[0]

    def served(cfg: gateway.GatewayConfig) -> None:
        assert cfg.routing == table
        assert cfg.keys == GatewayKeys.of(f"ns.{name}", rec.spec.stores.redis.key_prefix)
        # the gateway reads every FeatureView under the prefix it is materialized under (one
        # not found yet: the default, until it appears)
        for ref in [*cfg.feature_views.user, *cfg.feature_views.item]:
            fv = views.get(ref.name.removeprefix("ns."))
            written = fv_planner.materialize_config(fv).keys if fv else FeatureViewKeys.of(ref.name)
            assert ref.keys == written

    yield Case(
        f"gateway/{case}",
        _mounted(gateway_cm, serving.GATEWAY_CONFIG_FILE),
        parse_gateway_config,
        served,
    )

    history_cm = serving.history_job(rec, OWNER, "img").config_map

    def seeded(cfg: history.HistoryConfig) -> None:
        assert cfg.interactions_uri == rec.spec.interactions.path
        assert cfg.columns == _columns_of(rec)
        # the history Job writes the sets the gateway reads
        gateway_cfg = parse_gateway_config(_mounted(gateway_cm, serving.GATEWAY_CONFIG_FILE))
        assert GatewayKeys.of(cfg.recommender, cfg.online_store.key_prefix) == gateway_cfg.keys

    yield Case(f"history/{case}", _mounted(history_cm), parse_history_config, seeded)

    pre = precompute_planner.precompute_plan(rec, OWNER, "img", table, views)
    if pre is None:
        return

    def precomputed(cfg: precompute.PrecomputeConfig) -> None:
        # the stable's lists, under the keys and with the maxAge the gateway reads them by
        gateway_cfg = parse_gateway_config(_mounted(gateway_cm, serving.GATEWAY_CONFIG_FILE))
        assert cfg.gateway.routing.stable == table.stable
        assert cfg.gateway.routing.canary is None
        assert cfg.gateway.keys == gateway_cfg.keys
        assert cfg.gateway.precomputed == gateway_cfg.precomputed is not None
        assert cfg.gateway.feature_views == gateway_cfg.feature_views
        assert cfg.audience.most_active_percent == 5

    yield Case(f"precompute/{case}", _mounted(pre.config_map), parse_precompute_config, precomputed)


CASES = [
    *(c for fv in FEATURE_VIEWS for c in _feature_view_cases(fv)),
    *(c for rec in RECOMMENDERS for c in _recommender_cases(rec)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_rendered_config_parses_with_the_workloads_parser(case: Case) -> None:
    parsed = case.parse(case.rendered)
    case.check(parsed)
    # what the operator renders is exactly what it meant: nothing the workload would drop
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True) == (
        case.rendered
    )


def test_every_workload_and_example_kind_is_covered() -> None:
    kinds = {c.id.split("/")[0] for c in CASES}
    assert kinds == {
        "materialize",
        "backfill",
        "train",
        "index",
        "repository",
        "gateway",
        "history",
        "precompute",
    }
    # a Recommender reading FeatureViews that have their own key prefix is among them
    assert any(
        any(fv.spec.online_store.redis.key_prefix for fv in _views_of(rec).values())
        for rec in RECOMMENDERS
    )


def test_a_config_the_workload_refuses_names_the_field() -> None:
    rendered = _mounted(fv_planner.plan(FEATURE_VIEWS[0], OWNER, "img").config_map)
    rendered["onlineStore"]["keyPrefx"] = "typo"
    with pytest.raises(BadInputError, match=r"onlineStore\.keyPrefx: unknown field"):
        parse_materialize_config(rendered)


# --- termination summaries: what the workloads write is what the operator reads -------------


def _pod(message: str, finished: str = "2026-01-01T00:00:01Z") -> dict[str, Any]:
    term = {"message": message, "finishedAt": finished}
    return {"status": {"containerStatuses": [{"name": "main", "state": {"terminated": term}}]}}


def _job(condition: str, component: str = "materialize") -> dict[str, Any]:
    cond = {"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}
    labels = {"app.kubernetes.io/component": component}
    return {"metadata": {"name": "j", "labels": labels}, "status": {"conditions": [cond]}}


def _ended(work: Callable[[dict[str, Any]], dict[str, Any]], tmp_path: Path) -> str:
    """Run ``work`` through the entry point every workload uses; its termination message."""
    config, log = tmp_path / "config.json", tmp_path / "termination-log"
    config.write_text("{}")
    run_entrypoint("test", work, ["--config", str(config), "--termination-log", str(log)])
    return log.read_text()


SUMMARIES: list[tuple[str, Any]] = [
    (
        "materialize",
        materialize.MaterializeSummary(
            feature_view="ns.users", mode="full", mode_reason="no live version yet",
            as_of="2026-01-01T00:00:00Z", watermark="2026-01-01T00:00:00Z", rows_read=3,
            entities_written=2, read_seconds=0.1, write_seconds=0.2, rows_per_second=10,
            version=4, layers=[4], duration_seconds=0.5,
        ),
    ),
    (
        "train",
        train.TrainSummary(
            version="m-v1", artifact_uri="s3://m/v1", digest="sha256:" + "a" * 64,
            metrics={train.retrieval_metric(train.TWO_TOWER, "recall@20"): 0.2},
        ),
    ),
    (
        "index",
        index.IndexSummary(
            version="m-v1", index_uri="s3://i/v1", digest="sha256:" + "b" * 64, item_count=9,
            index_type="flat", recall=1.0, k=10, model_digest="sha256:" + "a" * 64,
        ),
    ),
    ("history", history.HistorySummary(users=2, pairs=5, interactions=7)),
    ("precompute", precompute.PrecomputeSummary(model_version="m-v1", users=9, written=8,
                                                skipped=1, computed_ms=1_700_000_000_000)),
    (
        "repository",
        repository.RepositorySummary(
            version="m-v1", repository_uri="/models", artifact_digest="sha256:" + "a" * 64,
            models=repository.RepositoryModels(user_tower="m-v1.user-tower", ranker="m-v1.ranker"),
            items=9,
        ),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "summary"), SUMMARIES, ids=[k for k, _ in SUMMARIES])
def test_the_operator_reads_the_summary_a_workload_writes(
    kind: str, summary: Any, tmp_path: Path
) -> None:
    message = _ended(lambda _: summary.to_wire(), tmp_path)
    outcome = job_outcome(_job("Complete"), termination_summary([_pod(message)]))
    assert outcome.succeeded
    assert outcome.parsed(type(summary)) == summary
    # another workload's summary is not mistaken for this one's
    others = {type(s) for _, s in SUMMARIES} - {type(summary)}
    assert all(outcome.parsed(other) is None for other in others)


def test_a_failure_reaches_the_status_in_the_workloads_words(tmp_path: Path) -> None:
    def work(_: dict[str, Any]) -> dict[str, Any]:
        raise BadInputError("source: column 'user_id' is missing")

    outcome = job_outcome(_job("Failed"), termination_summary([_pod(_ended(work, tmp_path))]))
    assert (outcome.failed, outcome.reason) == (True, "BadInput")
    assert outcome.message == "Job j: source: column 'user_id' is missing"
    assert outcome.parsed(materialize.MaterializeSummary) is None


def test_a_summary_too_long_for_kubernetes_keeps_its_envelope(tmp_path: Path) -> None:
    def work(_: dict[str, Any]) -> dict[str, Any]:
        raise BadInputError("x" * (2 * TERMINATION_MESSAGE_LIMIT))

    message = _ended(work, tmp_path)
    assert len(message.encode()) < TERMINATION_MESSAGE_LIMIT
    said = Outcome.read(json.loads(message))
    assert said is not None
    assert (said.status, said.reason, said.truncated) == ("Failed", "BadInput", True)


def test_rank_zero_reports_a_multi_pod_run_whoever_ends_last() -> None:
    result = train.TrainSummary(artifact_uri="s3://m/v1", digest="sha256:" + "a" * 64)
    worker = train.WorkerSummary(version="v1", role="worker", rank=1)
    pods = [
        _pod(json.dumps({"status": "Succeeded", **result.to_wire()}), "2026-01-01T00:00:01Z"),
        _pod(json.dumps({"status": "Succeeded", **worker.to_wire()}), "2026-01-01T00:00:09Z"),
    ]
    outcome = JobOutcome("j", True, True, "Succeeded", "", summary=termination_summary(pods) or {})
    assert outcome.parsed(train.TrainSummary) == result


OK = json.dumps({"status": "Succeeded", "version": 7, "entitiesWritten": 100})
WORKER = json.dumps({"status": "Succeeded", "role": "worker", "entitiesWritten": 50})
TRANSIENT = json.dumps({"status": "Failed", "reason": "Transient", "message": "Redis is down"})


@pytest.mark.parametrize(
    ("condition", "messages", "succeeded", "reason", "says"),
    [
        # a retry that mended a failed attempt: the retry's result speaks for the Job
        ("Complete", [(TRANSIENT, 9), (OK, 1)], True, "Succeeded", "completed"),
        ("Complete", [(WORKER, 9), (OK, 1)], True, "Succeeded", "completed"),
        # a split run whose shards all ended but none switched (Redis lost the run's record)
        ("Complete", [(WORKER, 1), (WORKER, 2)], False, "ResultNotReported", "workers' shares"),
        ("Complete", [(WORKER, 1), (TRANSIENT, 2), (WORKER, 3)], False, "ResultNotReported",
         "a failed attempt's: Redis is down"),
        # a failed run: the failure's words, not a worker's success
        ("Failed", [(WORKER, 9), (TRANSIENT, 1)], False, "Transient", "Job j: Redis is down"),
        # a message that is not JSON, or none: the Job's own word
        ("Complete", [("done", 1)], True, "Succeeded", "completed"),
        ("Complete", [], True, "Succeeded", "completed"),
    ],
)  # fmt: skip
def test_which_pod_speaks_for_a_finished_job(
    condition: str, messages: list[tuple[str, int]], succeeded: bool, reason: str, says: str
) -> None:
    pods = [_pod(text, f"2026-01-01T00:00:0{second}Z") for text, second in messages]
    outcome = job_outcome(_job(condition), termination_summary(pods))
    assert (outcome.finished, outcome.succeeded, outcome.reason) == (True, succeeded, reason)
    assert says in outcome.message, outcome.message


def test_the_gate_reads_the_headline_metrics_training_reports() -> None:
    nested = {
        "retrieval": {"twoTower": {"recall@20": 0.13, "ndcg@20": 0.2}, "als": {"recall@20": 0.11}},
        "ranking": {"ranker": {"auc": 0.76, "ndcg@10": 0.5}},
        "served": {
            "candidates": 200,
            "final": {"ndcg@20": 0.19, "ndcg@20.se": 0.02},
            "retrievalOrder": {"ndcg@20": 0.2},
        },
    }
    assert gate_metrics(headline_metrics(nested), 20) == {
        "recall@20": 0.13,
        "ndcg@20": 0.2,
        "auc": 0.76,
        # the served list and the baselines' lists the gate compares it with
        "served.ndcg@20": 0.19,
        "served.ndcg@20.se": 0.02,
        "als.recall@20": 0.11,
    }


def test_the_operator_needs_none_of_the_workloads_dependencies() -> None:
    """The operator's image carries the contract and a Redis client (it publishes the routing
    table and reads the gateways' counters), not torch, pandas, pyarrow, numpy or faiss."""
    blocked = ["recsys_workloads", "torch", "pandas", "pyarrow", "numpy", "faiss", "hiredis"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import recsys_operator.__main__, recsys_operator.reconcilers.recommender\n"
        "import recsys_contract.gateway, recsys_contract.history, recsys_contract.index\n"
        "import recsys_contract.keyspace, recsys_contract.materialize\n"
        "import recsys_contract.repository, recsys_contract.termination, recsys_contract.train\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


V1 = model_version("movies-v1", reason="Initial")


def _widths(mlp: torch.nn.Module) -> list[int]:
    return [layer.out_features for layer in mlp if isinstance(layer, torch.nn.Linear)]


def test_hidden_units_are_the_layer_widths_of_the_towers_and_the_ranker() -> None:
    rec = recommender(
        retrieval={"embeddingDim": 16, "hiddenUnits": [48, 24]},
        ranking={"hiddenUnits": [40]},
    )
    cfg = parse_train_config(training.train_config(rec, V1, training.FeatureSources()).to_wire())
    assert (cfg.model.tower_hidden, cfg.model.ranker_hidden) == ([48, 24], [40])
    ids_only = EntityShape(10, ())
    shape = ModelShape(
        user=ids_only,
        item=ids_only,
        embedding_dim=cfg.model.embedding_dim,
        feature_dim=cfg.model.feature_dim,
        tower_hidden=tuple(cfg.model.tower_hidden),
        temperature=cfg.model.temperature,
        ranker_cross_layers=cfg.model.ranker_cross_layers,
        ranker_hidden=tuple(cfg.model.ranker_hidden),
    )
    two_tower, ranker = TwoTower(shape), Ranker(shape)
    assert _widths(two_tower.user_tower.mlp) == [48, 24, 16]
    assert _widths(two_tower.item_tower.mlp) == [48, 24, 16]
    assert _widths(ranker.deep) == [40, 1]
    # unset: the trainer's defaults, which the field descriptions name
    default = parse_train_config(
        training.train_config(recommender(), V1, training.FeatureSources()).to_wire()
    )
    assert (default.model.tower_hidden, default.model.ranker_hidden) == ([128], [128, 64])


def test_ivf_flat_reaches_the_index_build_with_its_lists() -> None:
    rec = recommender(retrieval={"index": {"type": "IVFFlat", "ivf": {"nlist": 256, "nprobe": 8}}})
    params = index_params(parse_index_config(training.index_config(rec, V1).to_wire()))
    assert (params.kind, params.approximate, params.nlist, params.nprobe) == (
        "auto",
        "ivfFlat",
        256,
        8,
    )
    assert params.resolved_kind(rec.spec.retrieval.index.flat_below_items) == "ivfFlat"
    assert params.resolved_kind(rec.spec.retrieval.index.flat_below_items - 1) == "flat"
    defaults = recommender(retrieval={"index": {"type": "IVFFlat"}})
    params = index_params(parse_index_config(training.index_config(defaults, V1).to_wire()))
    assert (params.nlist, params.nprobe) == (1024, 16)  # the API's defaults
    hnsw = index_params(parse_index_config(training.index_config(recommender(), V1).to_wire()))
    assert hnsw.resolved_kind(10**6) == "hnsw"


def test_created_timestamp_field_reaches_the_materializer() -> None:
    doc = _docs("FeatureView")[0]
    doc["spec"]["source"]["createdTimestampField"] = "created"
    fv = FeatureView.model_validate(doc)
    parsed = parse_materialize_config(fv_planner.materialize_config(fv).to_wire())
    assert parsed.source.created_timestamp_column == "created"


def test_multi_key_atomic_groups_share_a_slot_and_entity_keys_spread() -> None:
    """Each group a script or MULTI/EXEC changes together hashes to one cluster slot (the key
    readers poll keeps its name); a view's entity keys carry no tag, so they spread."""
    fv = FeatureViewKeys.of("shop.users", "team:fv")
    gw = GatewayKeys.of("shop.movies", "team-a:")
    assert fv.live == "team:fv:shop.users:live"
    assert gw.routing == "team-a:recsys:shop.movies:routing"
    for keys in ((fv.live, fv.layers), (gw.routing, gw.index_alias),
                 (gw.logjoin_cursor, gw.logjoin_pending)):  # fmt: skip
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
    assert len({key_slot(k.encode()) for k in fv.entities([3], range(50))}) > 40
    assert len({key_slot(gw.seen(user).encode()) for user in range(50)}) > 40


@pytest.mark.parametrize("fv", FEATURE_VIEWS, ids=_id)
def test_the_materializer_gets_the_cluster_flag_only_on_a_cluster(fv: FeatureView) -> None:
    rendered = json.loads(fv_planner.plan(fv, OWNER, "img").config_map["data"][CONFIG_FILE])
    cluster = fv.spec.online_store.redis.mode == "Cluster"
    assert rendered["onlineStore"].get("redisCluster") is (True if cluster else None)
    assert parse_materialize_config(rendered).online_store.redis_cluster is cluster


@pytest.mark.parametrize("rec", RECOMMENDERS, ids=_id)
def test_the_gateway_and_the_jobs_get_the_cluster_flag_only_on_a_cluster(
    rec: Recommender,
) -> None:
    cluster = rec.spec.stores.redis.mode == "Cluster"
    table = serving.routing_table(rec, Routing("m-v1"), {"m-v1": None})
    config_map = serving.gateway_objects(rec, OWNER, table, "img", {})[0]
    gateway_cfg = json.loads(config_map["data"][serving.GATEWAY_CONFIG_FILE])
    assert gateway_cfg.get("redisCluster") is (True if cluster else None)
    assert parse_gateway_config(gateway_cfg).redis_cluster is cluster
    assert recommender_store(rec).redis_cluster is cluster


@pytest.mark.parametrize(
    ("component", "says"),
    [
        ("materialize", "nothing it made is used (the live version was not switched)"),
        ("train", "nothing it made is used (no model was published)"),
        ("index", "nothing it made is used, and the next run starts anew"),
    ],
)
def test_a_job_without_its_result_says_what_was_not_used_for_its_workload(
    component: str, says: str
) -> None:
    pods = [_pod(WORKER, "2026-01-01T00:00:01Z")]
    outcome = job_outcome(_job("Complete", component), termination_summary(pods))
    assert outcome.reason == "ResultNotReported"
    assert says in outcome.message, outcome.message
