"""The gateway's Redis key layout (pure names), next to the FeatureViews' (``featurestore``).

For a Recommender ``<ns>.<name>`` under the key prefix ``<p>`` (default empty)::

    <p>recsys:<ns>.<name>:routing          string  the routing table (JSON, as in the config's
                                                   ``routing``); written by the operator, polled
                                                   by every gateway replica
    <p>recsys:<ns>.<name>:index            string  the index alias: JSON {"uri", "version"} of
                                                   the index stable traffic follows
    <p>recsys:<ns>.<name>:served           stream  one entry per served response (log and wait)
    <p>recsys:<ns>.<name>:events           stream  one entry per posted outcome (click, purchase)
    <p>recsys:<ns>.<name>:seen:<user>      zset    item -> ms of the user's last interaction
    <p>recsys:<ns>.<name>:blocked          set     items nobody is shown
    <p>recsys:<ns>.<name>:blocked:<user>   set     items this user is not shown

Why a Redis key for routing rather than only the ConfigMap: a mounted ConfigMap reaches a
running pod after the kubelet's sync period (about a minute), while a rollout step or a
rollback must reach every replica within seconds; one GET per replica per second is free.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayKeys:
    base: str

    @classmethod
    def of(cls, recommender: str, prefix: str = "") -> GatewayKeys:
        return cls(f"{prefix}recsys:{recommender}")

    @property
    def routing(self) -> str:
        return f"{self.base}:routing"

    @property
    def index_alias(self) -> str:
        return f"{self.base}:index"

    @property
    def served(self) -> str:
        return f"{self.base}:served"

    @property
    def events(self) -> str:
        return f"{self.base}:events"

    @property
    def blocked(self) -> str:
        return f"{self.base}:blocked"

    def seen(self, user_id: object) -> str:
        return f"{self.base}:seen:{user_id}"

    def blocked_for(self, user_id: object) -> str:
        return f"{self.base}:blocked:{user_id}"
