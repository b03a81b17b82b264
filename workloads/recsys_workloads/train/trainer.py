"""The training loop: both models, one pass over the shuffled interactions per epoch.

Reproducible and restartable by construction:

- Every source of randomness in epoch ``e`` comes from a generator seeded with ``(seed, e)``
  (the shuffle, id dropout, the ranker's negatives), and initial weights from ``seed``. A run
  that resumes from the checkpoint of epoch ``e`` therefore continues exactly as the
  uninterrupted run would have, and the same seed on the same hardware gives the same model.
- After each epoch rank 0 writes ``epoch-NNNN.pt`` (models and optimizers) and then
  ``latest.json`` pointing at it, so a pod killed mid-write leaves the previous pointer intact.
  A restarted pod (the Job's retry) resumes after the last complete epoch. A checkpoint whose
  fingerprint (config and data) differs from this run's is ignored, not trusted.
- Distributed: launched by ``torchrun`` (an Indexed Job gives each pod its node rank;
  ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` come from torchrun), each worker trains on its own
  1/world slice of every epoch's shuffle, gradients are averaged by DDP. ``batchSize`` is per
  worker, so the in-batch negatives per step do not shrink as workers are added. The command an
  Indexed Job's pod runs (one process per pod, rank 0 reachable through the headless Service)::

      torchrun --nnodes=$WORKERS --node-rank=$JOB_COMPLETION_INDEX --nproc-per-node=1 \
          --master-addr=<job>-0.<service> --master-port=29500 \
          -m recsys_workloads.train --config /etc/recsys/config.json

  Only rank 0 evaluates, exports and writes the termination message's summary.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from recsys_contract.formats import join_uri
from recsys_contract.train import TrainConfig
from recsys_workloads.artifact_store import Store, sha256_hex
from recsys_workloads.runtime import BadInputError, TransientError
from recsys_workloads.train.dataset import EntityRows, Prepared
from recsys_workloads.train.export import LoadedModel
from recsys_workloads.train.models import (
    HISTORY,
    ModelShape,
    Ranker,
    TwoTower,
    in_batch_softmax_loss,
)
from recsys_workloads.train.warm import start_from

log = logging.getLogger("recsys_workloads.train")

LATEST = "latest.json"
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (a single process when WORLD_SIZE is unset)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Distributed:
        env = os.environ if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", "0"))
        except ValueError as exc:
            raise BadInputError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers ({exc})") from exc
        if world < 1 or not 0 <= rank < world:
            raise BadInputError(f"RANK={rank} is outside WORLD_SIZE={world}")
        return cls(rank, world, local)


def resolve_device(setting: str, dist: Distributed) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise BadInputError("training.device: 'cuda' requested but no CUDA device is visible")
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", dist.local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def make_deterministic(seed: int) -> None:
    """Fix the global seeds and ask torch for deterministic kernels (warn where none exist)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True, warn_only=True)


class FeatureTables:
    """Encoded entity feature rows on the training device, gathered per batch."""

    def __init__(self, rows: EntityRows, device: torch.device) -> None:
        self.tables = {k: torch.as_tensor(v, device=device) for k, v in rows.features.items()}

    def gather(self, row_idx: Tensor) -> dict[str, Tensor]:
        return {k: t[row_idx] for k, t in self.tables.items()}


@dataclass
class DeviceData:
    """Every array the training loop touches, moved to the device once."""

    user_idx: Tensor
    item_idx: Tensor
    user_row: Tensor
    item_row: Tensor
    item_log_q: Tensor
    catalog_item_idx: Tensor
    catalog_item_row: Tensor
    users: FeatureTables
    items: FeatureTables
    history_seq: Tensor
    hist_start: Tensor
    hist_end: Tensor
    history_length: int
    #: sorted (user index * item ids + item index) keys of the trained-on interactions: the
    #: pairs a hard negative must not be
    positive_keys: Tensor
    n_item_ids: int

    def is_positive(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        keys = user_idx * self.n_item_ids + item_idx
        pos = torch.searchsorted(self.positive_keys, keys).clamp(max=self.positive_keys.numel() - 1)
        return self.positive_keys[pos] == keys

    @torch.no_grad()
    def catalog_vectors(self, two_tower: nn.Module, batch: int = 8192) -> Tensor:
        """Every catalogue item's two-tower vector, for drawing the retrieval candidates."""
        model = _unwrap(two_tower)
        assert isinstance(model, TwoTower)
        tower = model.item_tower
        n = int(self.catalog_item_idx.shape[0])
        return torch.cat(
            [
                tower(
                    self.catalog_item_idx[s : s + batch],
                    self.items.gather(self.catalog_item_row[s : s + batch]),
                )
                for s in range(0, n, batch)
            ]
        )

    def user_inputs(self, b: Tensor) -> dict[str, Tensor]:
        """Features of the batch's users at their interactions' times, history included."""
        feats = self.users.gather(self.user_row[b])
        if self.history_length:
            steps = torch.arange(self.history_length, device=b.device)
            offsets = self.hist_end[b].unsqueeze(1) - 1 - steps.unsqueeze(0)
            valid = offsets >= self.hist_start[b].unsqueeze(1)
            feats[HISTORY] = torch.where(
                valid, self.history_seq[offsets.clamp(min=0)], torch.zeros_like(offsets)
            )
        return feats

    @classmethod
    def build(cls, p: Prepared, device: torch.device) -> DeviceData:
        def t(a: np.ndarray[Any, Any]) -> Tensor:
            return torch.as_tensor(a, device=device)

        return cls(
            user_idx=t(p.train_user_idx),
            item_idx=t(p.train_item_idx),
            user_row=t(p.train_user_row),
            item_row=t(p.train_item_row),
            item_log_q=t(p.item_log_q.astype(np.float32)),
            catalog_item_idx=t(p.items.encoder.ids.encode(p.catalog_item_ids)),
            catalog_item_row=t(p.catalog_item_rows),
            users=FeatureTables(p.users, device),
            items=FeatureTables(p.items, device),
            history_seq=t(p.history_seq),
            hist_start=t(p.train_hist_start),
            hist_end=t(p.train_hist_end),
            history_length=p.history_length,
            positive_keys=t(
                np.unique(
                    p.train_user_idx.astype(np.int64) * p.items.encoder.ids.size + p.train_item_idx
                )
            ),
            n_item_ids=int(p.items.encoder.ids.size),
        )


@dataclass
class TrainResult:
    shape: ModelShape
    two_tower: TwoTower
    ranker: Ranker
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    samples: int = 0
    device: str = "cpu"
    world_size: int = 1


def fingerprint(cfg: TrainConfig, p: Prepared) -> str:
    """What a checkpoint must match to be resumed: the config (less where outputs go and how
    many epochs to run, so a run can be extended) and the exact training data."""
    relevant = cfg.model_dump(
        mode="json",
        exclude={
            "artifact_uri": True,
            "checkpoint_uri": True,
            "version": True,
            "storage_options": True,
            "evaluation": True,
            "training": {"epochs", "device", "cpu_threads"},
        },
    )
    h = sha256_hex(repr(sorted(relevant.items())).encode())
    data = b"".join(
        np.ascontiguousarray(a).tobytes()
        for a in (p.train_user_idx, p.train_item_idx, p.train_user_row, p.train_item_row)
    )
    return sha256_hex((h + sha256_hex(data)).encode())


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _save_checkpoint(
    store: Store,
    uri: str,
    epoch: int,
    fp: str,
    models: tuple[nn.Module, nn.Module],
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    history: list[dict[str, float]],
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "fingerprint": fp,
        "two_tower": _unwrap(models[0]).state_dict(),
        "ranker": _unwrap(models[1]).state_dict(),
        "opt_two_tower": optimizers[0].state_dict(),
        "opt_ranker": optimizers[1].state_dict(),
        "history": history,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    name = f"epoch-{epoch:04d}.pt"
    store.write_bytes(join_uri(uri, name), buf.getvalue(), what="write checkpoint")
    store.write_json(
        join_uri(uri, LATEST),
        {"epoch": epoch, "file": name, "fingerprint": fp},
        what="write checkpoint pointer",
    )


def _load_checkpoint(
    store: Store, uri: str, fp: str, device: torch.device
) -> dict[str, Any] | None:
    pointer_uri = join_uri(uri, LATEST)
    if not store.exists(pointer_uri, what="look for checkpoint"):
        return None
    try:
        pointer = store.read_json(pointer_uri, what="read checkpoint pointer")
        if not isinstance(pointer, dict) or pointer.get("fingerprint") != fp:
            log.warning("checkpoint at %s belongs to another config or data; starting fresh", uri)
            return None
        raw = store.read_bytes(join_uri(uri, str(pointer["file"])), what="read checkpoint")
        state: dict[str, Any] = torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
    except TransientError:
        raise
    except Exception as exc:  # a damaged checkpoint costs epochs, never the run
        log.warning("checkpoint at %s is unreadable (%s); starting fresh", uri, exc)
        return None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != fp:
        log.warning("checkpoint %s is not usable; starting fresh", pointer["file"])
        return None
    return state


def train(
    cfg: TrainConfig,
    p: Prepared,
    store: Store,
    dist: Distributed,
    checkpoint: LoadedModel | None = None,
) -> TrainResult:
    """Train (or finish training) both models; returns them unwrapped, in eval mode. With a
    ``checkpoint`` (a warm start that fits, ``train.warm``) the networks begin at its weights;
    a resumable checkpoint of this very run still wins, being further along."""
    device = resolve_device(cfg.training.device, dist)
    if cfg.training.cpu_threads:
        torch.set_num_threads(cfg.training.cpu_threads)
    make_deterministic(cfg.seed)
    shape = p.model_shape(cfg)
    two_tower = TwoTower(shape)
    ranker = Ranker(shape)
    if checkpoint is not None:
        start_from(checkpoint, p, two_tower, ranker)
    two_tower, ranker = two_tower.to(device), ranker.to(device)
    tc = cfg.training
    opt_tt = torch.optim.Adam(
        two_tower.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay
    )
    opt_rk = torch.optim.Adam(
        ranker.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay
    )
    fp = fingerprint(cfg, p)
    ckpt_uri = cfg.resolved_checkpoint_uri
    history: list[dict[str, float]] = []
    start_epoch = 0
    state = _load_checkpoint(store, ckpt_uri, fp, device)
    if state is not None:
        two_tower.load_state_dict(state["two_tower"])
        ranker.load_state_dict(state["ranker"])
        opt_tt.load_state_dict(state["opt_two_tower"])
        opt_rk.load_state_dict(state["opt_ranker"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        log.info("resuming after epoch %d from %s", start_epoch, ckpt_uri)

    tt_model: nn.Module = two_tower
    rk_model: nn.Module = ranker
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        tt_model = DistributedDataParallel(two_tower, device_ids=ids)
        rk_model = DistributedDataParallel(ranker, device_ids=ids)

    data = DeviceData.build(p, device)
    result = TrainResult(
        shape,
        two_tower,
        ranker,
        history,
        start_epoch,
        device=str(device),
        world_size=dist.world_size,
    )
    started = time.perf_counter()
    for epoch in range(start_epoch, tc.epochs):
        stats = _run_epoch(cfg, epoch, data, (tt_model, rk_model), (opt_tt, opt_rk), dist, device)
        result.samples += int(stats.pop("samples"))
        history.append({"epoch": float(epoch + 1), **stats})
        log.info("epoch %d: %s", epoch + 1, stats)
        if dist.is_main:
            _save_checkpoint(
                store, ckpt_uri, epoch + 1, fp, (tt_model, rk_model), (opt_tt, opt_rk), history
            )
        if dist.enabled:
            torch_dist.barrier()
    result.seconds = time.perf_counter() - started
    two_tower.eval()
    ranker.eval()
    return result


def _with_hard_negatives(
    d: DeviceData, b: Tensor, u_vec: Tensor, cat_vec: Tensor, uniform: Tensor, ranks: Tensor
) -> Tensor:
    """The negatives' catalogue positions ([batch * reps], grouped by positive): the first
    ``ranks.shape[1]`` of each positive's become its user's retrieval candidates at ``ranks``
    (a candidate the user trained on stays the uniform draw)."""
    n_cands = int(ranks.max()) + 1 if ranks.numel() else 1
    top = torch.topk(u_vec @ cat_vec.T, k=min(n_cands, cat_vec.shape[0]), dim=1).indices
    hard = torch.gather(top, 1, ranks.to(top.device))
    reps = uniform.numel() // b.numel()
    out = uniform.view(b.numel(), reps).clone()
    users = d.user_idx[b].unsqueeze(1).expand_as(hard)
    seen = d.is_positive(users, d.catalog_item_idx[hard])
    n_hard = hard.shape[1]
    out[:, :n_hard] = torch.where(seen, out[:, :n_hard], hard)
    return out.reshape(-1)


def _run_epoch(
    cfg: TrainConfig,
    epoch: int,
    d: DeviceData,
    models: tuple[nn.Module, nn.Module],
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    dist: Distributed,
    device: torch.device,
) -> dict[str, float]:
    tc, mc = cfg.training, cfg.model
    tt_model, rk_model = models
    opt_tt, opt_rk = optimizers
    tt_model.train()
    rk_model.train()
    gen = _epoch_generator(cfg.seed, epoch)
    torch.manual_seed(cfg.seed * 1_000_003 + epoch)
    n = int(d.user_idx.shape[0])
    per_rank = n // dist.world_size
    if per_rank == 0:
        raise BadInputError(
            f"training: {n} training interactions cannot be split across {dist.world_size} workers"
        )
    perm = torch.randperm(n, generator=gen)[: per_rank * dist.world_size]
    mine = perm.view(per_rank, dist.world_size)[:, dist.rank]
    steps = math.ceil(per_rank / tc.batch_size)
    if tc.max_steps_per_epoch is not None:
        steps = min(steps, tc.max_steps_per_epoch)
    n_catalog = int(d.catalog_item_idx.shape[0])
    temperature = mc.temperature
    reps = tc.ranker_negatives
    n_hard = round(reps * tc.ranker_hard_negatives)
    n_cands = min(cfg.evaluation.candidates, n_catalog)
    # candidates come from the item vectors as of the epoch's start (one catalogue pass per
    # epoch, not per step); the users' vectors are the step's own
    cat_vec = d.catalog_vectors(tt_model) if n_hard else None
    tt_total = rk_total = 0.0
    seen = 0
    for step in range(steps):
        b = mine[step * tc.batch_size : (step + 1) * tc.batch_size]
        # a last batch of one has no in-batch negatives; skip it
        if b.numel() < 2:
            continue
        # draw every random number on the CPU generator, whatever the device, for determinism
        drop = torch.rand(b.numel(), 2, generator=gen) < mc.id_dropout
        neg_pos = torch.randint(0, n_catalog, (b.numel() * reps,), generator=gen)
        hard_rank = (
            torch.randint(0, n_cands, (b.numel(), n_hard), generator=gen) if n_hard else None
        )
        b = b.to(device)
        drop = drop.to(device)
        u_idx = d.user_idx[b].masked_fill(drop[:, 0], 0)
        i_idx = d.item_idx[b].masked_fill(drop[:, 1], 0)
        u_feats = d.user_inputs(b)
        i_feats = d.items.gather(d.item_row[b])

        loss_tt: Tensor
        if mc.negatives == "full":
            # every catalogue item is a candidate; catalogue position = item index - 1
            u_vec, all_vec = tt_model(
                u_idx, u_feats, d.catalog_item_idx, d.items.gather(d.catalog_item_row)
            )
            logits = u_vec @ all_vec.T / temperature
            loss_tt = F.cross_entropy(logits, d.item_idx[b] - 1)
        else:
            u_vec, i_vec = tt_model(u_idx, u_feats, i_idx, i_feats)
            log_q = d.item_log_q[d.item_idx[b]] if mc.log_q_correction else None
            loss_tt = in_batch_softmax_loss(u_vec, i_vec, d.item_idx[b], temperature, log_q)
        opt_tt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss_tt)
        opt_tt.step()

        # ranker: the batch's positives against catalog items, some drawn from the
        # retrieval candidates (hard), the rest uniformly
        neg_pos = neg_pos.to(device)
        if cat_vec is not None and hard_rank is not None:
            neg_pos = _with_hard_negatives(d, b, u_vec.detach(), cat_vec, neg_pos, hard_rank)
        ru_idx = torch.cat([d.user_idx[b], d.user_idx[b].repeat_interleave(reps)])
        ru_feats = {k: torch.cat([v, v.repeat_interleave(reps, dim=0)]) for k, v in u_feats.items()}
        ri_idx = torch.cat([d.item_idx[b], d.catalog_item_idx[neg_pos]])
        ri_row = torch.cat([d.item_row[b], d.catalog_item_row[neg_pos]])
        labels = torch.cat(
            [torch.ones(b.numel(), device=device), torch.zeros(neg_pos.numel(), device=device)]
        )
        logits = rk_model(ru_idx, ru_feats, ri_idx, d.items.gather(ri_row))
        loss_rk = F.binary_cross_entropy_with_logits(logits, labels)
        opt_rk.zero_grad(set_to_none=True)
        torch.autograd.backward(loss_rk)
        opt_rk.step()

        tt_total += float(loss_tt.detach())
        rk_total += float(loss_rk.detach())
        seen += b.numel()
    done = max(steps, 1)
    return {
        "twoTowerLoss": tt_total / done,
        "rankerLoss": rk_total / done,
        "steps": float(steps),
        "samples": float(seen * dist.world_size),
    }
