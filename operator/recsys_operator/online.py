"""The operator's side of the online store: the routing table it publishes for the gateways,
and what the gateways report back (replica heartbeats, per-version traffic counters).

The client comes from ``recsys_contract.online_client`` like the gateway's, a cluster client
for ``mode: Cluster``: the routing table and the index alias share a slot (``keyspace``), so
their MULTI/EXEC runs on a cluster too, and a keyspace's deletion walks every primary.

The gateways poll the routing table in Redis every second, so a weight change or a rollback
reaches every replica within about a poll; the ConfigMap stays the copy a gateway boots from.
A table that is already what Redis holds is not written again, so a quiet reconcile writes
nothing here either.

A Recommender whose Redis needs a password names a Secret; the operator reads that key
(RBAC ``get`` on Secrets) and keeps it for ``PASSWORD_TTL_SECONDS``, so a rotated password is
picked up without a request per reconcile.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio
import redis.exceptions

from recsys_contract.gateway import RoutingTable
from recsys_contract.keyspace import GatewayKeys, IndexAlias
from recsys_contract.online_client import AsyncRedis, async_redis
from recsys_contract.traffic import Counts, Heartbeat
from recsys_operator.api.common import SecretKeyRef
from recsys_operator.api.stores import RedisStore
from recsys_operator.kube import KubeClient

PASSWORD_TTL_SECONDS = 300.0
#: Redis calls are short: a stalled Redis must not stall the reconcile loop.
TIMEOUT_SECONDS = 2.0


class OnlineStoreUnavailable(Exception):
    """Redis could not be reached or answered with an error; the message says which."""


@dataclass
class OnlineStore:
    kube: KubeClient
    _clients: dict[tuple[str, bool, str | None], AsyncRedis] = field(default_factory=dict)
    _passwords: dict[tuple[str, str, str], tuple[float, str]] = field(default_factory=dict)

    async def _password(self, namespace: str, ref: SecretKeyRef | None) -> str | None:
        if ref is None:
            return None
        key = (namespace, ref.name, ref.key)
        cached = self._passwords.get(key)
        if cached and time.monotonic() - cached[0] < PASSWORD_TTL_SECONDS:
            return cached[1]
        secret = await self.kube.get("v1", "Secret", ref.name, namespace)
        data = (secret or {}).get("data") or {}
        if ref.key not in data:
            raise OnlineStoreUnavailable(
                f"Secret {namespace}/{ref.name} has no key {ref.key!r} "
                "(spec.stores.redis.passwordSecretRef)"
            )
        password = base64.b64decode(data[ref.key]).decode()
        self._passwords[key] = (time.monotonic(), password)
        return password

    async def client(self, store: RedisStore, namespace: str) -> AsyncRedis:
        """The client of one store (a cluster client when ``mode: Cluster``), made once."""
        password = await self._password(namespace, store.password_secret_ref)
        cluster = store.mode == "Cluster"
        key = (store.url, cluster, password)
        found = self._clients.get(key)
        if found is None:
            found = async_redis(
                store.url,
                cluster=cluster,
                password=password,
                socket_timeout_s=TIMEOUT_SECONDS,
                connect_timeout_s=TIMEOUT_SECONDS,
            )
            self._clients[key] = found
        return found

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


async def publish_routing(
    client: AsyncRedis, keys: GatewayKeys, table: RoutingTable, alias: IndexAlias | None
) -> bool:
    """Make Redis hold ``table`` (and the stable's index alias); True when it wrote."""
    wanted = json.dumps(table.to_wire(), sort_keys=True)
    try:
        current, current_alias = await client.mget([keys.routing, keys.index_alias])
        alias_json = alias.to_json() if alias else None
        same_alias = alias_json is None or _text(current_alias) == alias_json
        if _text(current) == wanted and same_alias:
            return False
        pipe = client.pipeline(transaction=True)
        pipe.set(keys.routing, wanted)
        if alias_json:
            pipe.set(keys.index_alias, alias_json)
        await pipe.execute()
        return True
    except (redis.exceptions.RedisError, OSError) as exc:
        raise OnlineStoreUnavailable(f"Redis: {exc}") from exc


async def heartbeats(client: AsyncRedis, keys: GatewayKeys) -> dict[str, Heartbeat]:
    """Every replica's last heartbeat; unparsable ones are left out (a replica of another
    build says nothing the operator could trust)."""
    try:
        raw = await client.hgetall(keys.replicas)
    except (redis.exceptions.RedisError, OSError) as exc:
        raise OnlineStoreUnavailable(f"Redis: {exc}") from exc
    out: dict[str, Heartbeat] = {}
    for replica, value in raw.items():
        try:
            out[_text(replica)] = Heartbeat.from_json(value)
        except (ValueError, KeyError, TypeError):
            continue
    return out


async def counts(
    client: AsyncRedis, keys: GatewayKeys, version: str, buckets: Iterable[int]
) -> Counts:
    """A version's counters summed over ``buckets``, in one round trip."""
    wanted = list(buckets)
    if not wanted:
        return Counts()
    try:
        pipe = client.pipeline(transaction=False)
        for bucket in wanted:
            pipe.hgetall(keys.stats(version, bucket))
        return Counts.of(await pipe.execute())
    except (redis.exceptions.RedisError, OSError) as exc:
        raise OnlineStoreUnavailable(f"Redis: {exc}") from exc


#: Keys per UNLINK while a keyspace is deleted (and SCAN's COUNT hint).
DELETE_BATCH = 500


async def delete_keyspace(client: AsyncRedis, base: str) -> int:
    """Delete every key below ``base`` (``<base>:*``): a FeatureView's (the live pointer, every
    layer's entities, the layer book, the sequence and the lock) or a Recommender's (the
    routing table, index alias, logs, per-user sets, counters); the number deleted.

    SCAN walks the keyspace in steps (on a cluster, the cluster client's walks every primary in
    turn, and its UNLINK is split by slot), so a large view never blocks Redis the way KEYS would,
    and UNLINK frees the values off Redis' main thread. Stored names hold no ``:`` and no glob
    characters (``keyspace.NAME_PATTERN``), so the pattern matches this object's keys only."""
    removed = 0
    batch: list[bytes | str] = []
    try:
        async for key in client.scan_iter(match=f"{base}:*", count=DELETE_BATCH):
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                removed += int(await client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(await client.unlink(*batch))
    except (redis.exceptions.RedisError, OSError) as exc:
        raise OnlineStoreUnavailable(f"Redis: {exc}") from exc
    return removed
