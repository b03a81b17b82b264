"""``recsys-operator``: run the operator against the cluster in the kubeconfig or in-cluster.

The credentials are loaded once, at start (``kubeconfig.load``: ``$KUBECONFIG``, else the
in-cluster service account, else ``~/.kube/config``); kopf's login handler and the operator's
client both draw on that one object, so kopf's watches and the reconcilers' requests are always
the same identity, and a bad kubeconfig stops the process with one line saying why.

Watch scope: ``--namespace`` (repeatable) for a list of namespaces, or ``--all-namespaces``
(the default). The RBAC the Helm chart grants matches each choice (Role per namespace or one
ClusterRole).

Leader election (``--leader-elect``, module ``leader``): off when run by hand, where one
process is the only operator and needs neither a Lease nor the RBAC for it, and where a
developer's restart should not wait for a lease; on in the chart, whose replicas all watch and
only the holder of the Lease reconciles. Without it, running two processes reconciles every
object twice.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kopf
from lightkube import ConfigError
from prometheus_client import start_http_server

from recsys_operator.controller import Context, Controller, configure_settings, register
from recsys_operator.images import default_images
from recsys_operator.kube import KubeClient
from recsys_operator.kubeconfig import Credentials, load
from recsys_operator.leader import Fence, LeaderElector, Settings, Timing, default_identity
from recsys_operator.metrics import LEADER
from recsys_operator.reconcilers import RECONCILERS

log = logging.getLogger("recsys_operator")

#: Images the operator puts into the workloads it creates, unless a spec names its own.
DEFAULT_IMAGES = default_images()


def build(
    workers: int,
    registry: kopf.OperatorRegistry,
    credentials: Credentials,
    namespaces: Sequence[str] = (),
    election: Settings | None = None,
) -> Controller:
    controller = Controller(reconcilers=RECONCILERS, workers=workers)
    register(controller, registry)
    elector: LeaderElector | None = None
    election_task: asyncio.Task[None] | None = None

    # kopf calls it at start, when the token's expiration passes, and after a 401.
    @kopf.on.login(registry=registry)
    async def _login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        return await credentials.login(trust_env=settings.networking.trust_env)

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        nonlocal elector, election_task
        configure_settings(settings)
        fence = (
            Fence(election.timing.renew_deadline, asyncio.get_running_loop().time)
            if election
            else Fence.open()
        )
        kube = KubeClient(credentials, trust_env=settings.networking.trust_env, fence=fence.check)

        async def lead() -> None:
            await controller.prime(kube, list(namespaces) or [None])
            controller.start(Context(kube=kube, queue=controller.queue, images=DEFAULT_IMAGES))
            log.info("recsys-operator reconciling with %d workers", workers)

        if election is None:
            LEADER.set(1)
            await lead()
            return
        # A standby keeps kopf's watches (and so the cache) current and only waits; the
        # election runs beside kopf, which goes on to start the watches.
        elector = LeaderElector(kube, election, fence, clock=asyncio.get_running_loop().time)
        election_task = asyncio.create_task(elector.run(lead, _exit_on_lost_lease))

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        if election_task is not None:
            election_task.cancel()
        await controller.stop()
        if elector is not None:  # after the last reconcile: hand over at once
            await elector.release()
            await elector.kube.close()

    return controller


def _exit_on_lost_lease() -> None:
    """End the process now: no drain, no cleanup handler, so nothing more is written; the
    Deployment restarts the container, which comes back as a standby with a fresh cache."""
    logging.shutdown()
    os._exit(1)


#: Where a pod finds its own namespace (the service account's mount).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def election_settings(args: argparse.Namespace) -> Settings | None:
    """The leader election's settings from the flags, or None when it is off; a ValueError
    names the flag to fix."""
    if not args.leader_elect:
        return None
    timing = Timing(
        lease_duration=args.leader_election_lease_duration,
        renew_deadline=args.leader_election_renew_deadline,
        retry_period=args.leader_election_retry_period,
    )
    timing.check()
    namespace = args.leader_election_namespace
    if not namespace and SERVICE_ACCOUNT_NAMESPACE.exists():
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    if not namespace:
        raise ValueError(
            "--leader-elect needs the Lease's namespace: pass --leader-election-namespace "
            "or set POD_NAMESPACE (in a pod it is the service account's namespace)"
        )
    return Settings(
        namespace=namespace,
        name=args.leader_election_name,
        identity=args.leader_election_identity or default_identity(),
        timing=timing,
    )


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
    elect = parser.add_argument_group("leader election (a coordination.k8s.io Lease)")
    elect.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("RECSYS_LEADER_ELECT", "").lower() in ("1", "true", "yes"),
        help="reconcile only while holding the Lease (default: $RECSYS_LEADER_ELECT, else off)",
    )
    elect.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE", ""),
        help="the Lease's namespace (default: $POD_NAMESPACE, else the pod's own)",
    )
    elect.add_argument("--leader-election-name", default="recsys-operator", help="the Lease")
    elect.add_argument(
        "--leader-election-identity",
        default=os.environ.get("POD_NAME", ""),
        help="this replica's name in the Lease (default: $POD_NAME, else host_random)",
    )
    elect.add_argument(
        "--leader-election-lease-duration",
        type=float,
        default=Timing.lease_duration,
        help="seconds a standby waits after the last renewal it saw before taking over",
    )
    elect.add_argument(
        "--leader-election-renew-deadline",
        type=float,
        default=Timing.renew_deadline,
        help="seconds the leader keeps trying to renew before it stops",
    )
    elect.add_argument(
        "--leader-election-retry-period",
        type=float,
        default=Timing.retry_period,
        help="seconds between two looks at the Lease",
    )
    args = parser.parse_args(argv)
    try:
        args.election = election_settings(args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


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
    build(args.workers, registry, credentials, args.namespace, args.election)
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
