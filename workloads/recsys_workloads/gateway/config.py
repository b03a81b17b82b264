"""The gateway's config and routing table, parsed: the models are ``recsys_contract.gateway``'s
(the operator renders them), a problem is bad input naming the field."""

from __future__ import annotations

from typing import Any

from recsys_contract.gateway import GatewayConfig, RoutingTable
from recsys_workloads.runtime import parse_config


def parse_gateway_config(raw: Any) -> GatewayConfig:
    return parse_config(GatewayConfig, raw, "gateway config")


def parse_routing(raw: Any) -> RoutingTable:
    return parse_config(RoutingTable, raw, "routing table")
