"""``recsys-operator``: run the operator against the cluster in the kubeconfig or in-cluster.

The credentials are loaded once, at start (``kubeconfig.load``: ``$KUBECONFIG``, else the
in-cluster service account, else ``~/.kube/config``); kopf's login handler and the operator's
client both draw on that one object, so kopf's watches and the reconcilers' requests are always
the same identity, and a bad kubeconfig stops the process with one line saying why.

Watch scope: ``--namespace`` (repeatable) for a list of namespaces, or ``--all-namespaces``
(the default). The RBAC the Helm chart grants matches each choice (Role per namespace or one
ClusterRole).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import kopf
from lightkube import ConfigError
from prometheus_client import start_http_server

from recsys_operator.controller import Context, Controller, configure_settings, register
from recsys_operator.images import default_images
from recsys_operator.kube import KubeClient
from recsys_operator.kubeconfig import Credentials, load
from recsys_operator.reconcilers import RECONCILERS

log = logging.getLogger("recsys_operator")

#: Images the operator puts into the workloads it creates, unless a spec names its own.
DEFAULT_IMAGES = default_images()


def build(
    workers: int,
    registry: kopf.OperatorRegistry,
    credentials: Credentials,
    namespaces: Sequence[str] = (),
) -> Controller:
    controller = Controller(reconcilers=RECONCILERS, workers=workers)
    register(controller, registry)

    # kopf calls it at start, when the token's expiration passes, and after a 401.
    @kopf.on.login(registry=registry)
    async def _login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        return await credentials.login(trust_env=settings.networking.trust_env)

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings)
        kube = KubeClient(credentials, trust_env=settings.networking.trust_env)
        await controller.prime(kube, list(namespaces) or [None])
        controller.start(Context(kube=kube, queue=controller.queue, images=DEFAULT_IMAGES))
        log.info("recsys-operator started with %d workers", workers)

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        await controller.stop()

    return controller


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recsys-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeat for several)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all (default)")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port")
    parser.add_argument("--health-port", type=int, default=8081, help="liveness probe port")
    parser.add_argument("--workers", type=int, default=8, help="concurrent reconciles")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf logs every handler call at INFO; the reconcilers log what they decide.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        credentials = load()
    except ConfigError as exc:
        raise SystemExit(f"recsys-operator: {exc}") from None
    if args.metrics_port:
        start_http_server(args.metrics_port)
    log.info(
        "recsys-operator: API server %s, credentials from %s",
        credentials.server,
        credentials.source,
    )
    registry = kopf.OperatorRegistry()
    build(args.workers, registry, credentials, args.namespace)
    clusterwide = not args.namespace
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=clusterwide,
            namespaces=args.namespace,
            standalone=True,
            liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz"
            if args.health_port
            else None,
        )
    )


if __name__ == "__main__":
    main()
