"""The closed loop on one machine: the operator, a real control plane, real workloads.

What it does, in order:
1. starts the testbed's control plane (etcd, kube-apiserver, controller-manager, scheduler,
   kwok with a fake GPU node) and a redis-server, and installs the CRDs;
2. writes MovieLens-100k (from the recbole wheel) as parquet under a work folder;
3. starts the operator (``python -m recsys_operator``) watching the namespace ``demo``;
4. applies ``demo/recommender.yaml`` (two FeatureViews and a Recommender over that parquet);
5. runs the Job pods the operator creates as local processes (tests/testbed/local_runner.py:
   kwok plays the node, the workload code is the real one): the FeatureViews' backfills
   materialize into Redis, the users' histories are seeded from the interactions, the first
   ModelVersion trains with torch on the CPU, passes the evaluation gate, gets a FAISS index,
   and becomes the stable version;
6. plays the serving Deployments the operator made (tests/testbed/local_serving.py): the
   Triton pod's init container builds the version's model repository from its artifact, the
   real ``tritonserver`` loads it, the gateway starts with the operator's routing config;
7. prints what ``kubectl get recsys`` shows, the version's metrics and a recommendation the
   gateway served, then keeps everything up until Ctrl-C (``--exit`` to stop at once),
   printing the KUBECONFIG and the gateway's URL to explore with.

    make demo            # or: .venv/bin/python demo/run_demo.py [--workdir DIR] [--exit]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from testbed import controlplane  # noqa: E402
from testbed.local_runner import LocalRunner  # noqa: E402
from testbed.local_serving import LocalServing, ServingPlayer  # noqa: E402
from testbed.processes import free_port  # noqa: E402
from testbed.redis_server import start_redis  # noqa: E402

NAMESPACE = "demo"


#: Said first, so nobody takes the demo for a cluster: no container runs in it.
WHAT_RUNS_WHERE = (
    "what runs where: the apiserver, controllers and kwok are processes of this machine, and "
    "kwok plays the node, so no container runs. The pods the operator creates run here as "
    "local processes with the real workload code and config: the Jobs' by "
    "tests/testbed/local_runner.py, Triton's and the gateway's by tests/testbed/local_serving.py. "
    "The same Recommender in containers on a real node (containerd, kubelet, CoreDNS; root): "
    "make test PYTEST_ARGS='-m realnode'"
)


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(1)
    raise SystemExit(f"demo: {what} did not happen within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep data, artifacts and logs here")
    parser.add_argument("--exit", action="store_true", help="stop once the loop has closed")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument(
        "--scenario",
        choices=("loop", "rollout", "rollback", "drift"),
        default="loop",
        help="loop: MovieLens through the closed loop (default); rollout / rollback: a canary "
        "judged on simulated users' clicks, promoted or aborted; drift: served features shift, "
        "the drift check names them, a retrain on the logged rows goes through the gate and the "
        "canary (demo/scenarios.py)",
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the finally below stops every process the demo started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="recsys-demo-"))
    work.mkdir(parents=True, exist_ok=True)

    say("starting the control plane and redis-server")
    say(WHAT_RUNS_WHERE)
    cp = controlplane.start()
    redis = start_redis()
    operator: subprocess.Popen[bytes] | None = None
    runner: LocalRunner | None = None
    serving: LocalServing | None = None
    try:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
        cp.kubectl("create", "namespace", NAMESPACE)

        say("starting the operator")
        log = (work / "operator.log").open("wb")
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recsys_operator",
                "--namespace",
                NAMESPACE,
                "--metrics-port",
                str(free_port()),
                "--health-port",
                "0",
            ],
            env={**os.environ, "KUBECONFIG": str(cp.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        runner = LocalRunner(cp.kubectl_path, cp.kubeconfig, NAMESPACE)
        runner.start()
        if args.scenario != "loop":
            from scenarios import Cluster, run

            cluster = Cluster(cp.kubectl, cp.kubeconfig, cp.kubectl_path, redis.url)
            return run(args.scenario, cluster, work, NAMESPACE, args.timeout)

        say("writing MovieLens-100k as parquet")
        from recsys_workloads.datasets.movielens import write_dataset

        data = write_dataset(str(work / "data"))

        manifest = (REPO / "demo" / "recommender.yaml").read_text()
        for key, value in {
            "USERS_URI": data.users,
            "ITEMS_URI": data.items,
            "INTERACTIONS_URI": data.interactions,
            "REDIS_URL": redis.url,
            "ARTIFACTS_URI": f"file://{work / 'artifacts'}",
        }.items():
            manifest = manifest.replace(f"${{{key}}}", value)
        say("applying demo/recommender.yaml")
        print(
            cp.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=manifest).stdout,
            end="",
        )

        def stable() -> str | None:
            out = cp.kubectl(
                "get",
                "recommender",
                "movies",
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.status.rollout.stable}",
                check=False,
            )
            return out.stdout.strip() or None

        say("waiting: materialize, train (torch, CPU), evaluate, index (FAISS), promote")
        version = wait_for("promotion of the first ModelVersion", stable, args.timeout)
        cp.kubectl(
            "wait", "-n", NAMESPACE, "--for=condition=Ready", "recommender/movies", "--timeout=120s"
        )
        # Training reads the parquet itself, so promotion can come before a backfill's status:
        # the table below shows each view's rows once its keyspace is live.
        cp.kubectl(
            "wait",
            "-n",
            NAMESPACE,
            "--for=condition=Materialized",
            "featureview",
            "--all",
            "--timeout=120s",
        )
        say(f"{version} is stable; the loop has closed")
        print(cp.kubectl("get", "recsys", "-n", NAMESPACE).stdout)
        # ROWS above is the newest run's: an hourly run that found nothing new writes 0.
        views = json.loads(cp.kubectl("get", "featureview", "-n", NAMESPACE, "-o", "json").stdout)
        for view in views["items"]:
            backfill = view["status"].get("lastBackfill") or {}
            say(
                f"{view['metadata']['name']}: the backfill wrote {backfill.get('rows')} entities "
                "to Redis"
            )
        mv = json.loads(cp.kubectl("get", "mv", version, "-n", NAMESPACE, "-o", "json").stdout)
        print(
            json.dumps(
                {
                    k: mv["status"].get(k)
                    for k in ("phase", "evaluation", "metrics", "artifactUri", "indexName")
                },
                indent=1,
            )
        )
        cp.kubectl(
            "wait",
            "-n",
            NAMESPACE,
            "--for=condition=Complete",
            "job",
            "-l",
            "app.kubernetes.io/component=history",
            "--timeout=300s",
        )
        say("users' histories seeded from the interactions into Redis (the history Job)")
        say(
            "serving: the Triton pod's init container builds the model repository, then "
            "tritonserver and the gateway start (pods played locally)"
        )
        player = ServingPlayer(cp.kubectl_path, cp.kubeconfig, NAMESPACE, work / "serving")
        serving = player.serve("movies")
        query = f"{serving.url}/v1/recommendations?user_id=1&k=5"
        with urllib.request.urlopen(query, timeout=10) as resp:
            served = json.loads(resp.read())
        say(f"GET {query}")
        print(
            json.dumps(
                {
                    k: served[k]
                    for k in ("requestId", "modelVersion", "variant", "items", "fallback")
                },
                indent=1,
            )
        )
        say(f"export KUBECONFIG={cp.kubeconfig}   (kubectl: {cp.kubectl_path})")
        say(
            f"gateway: {serving.url}  (GET /v1/recommendations?user_id=N, POST /v1/events, "
            "GET /metrics)"
        )
        if args.exit:
            return 0
        say("up until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    finally:
        if serving is not None:
            serving.stop()
        if runner is not None:
            runner.stop()
        if operator is not None and operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)
            operator.wait(15)
        redis.stop()
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
