"""Operator at scale: N Recommenders, each with two FeatureViews, applied at once.

Measures, on the real control plane of the testbed, for each N:
- seconds until every object is Ready-or-waiting (FeatureViews waiting for their first run, as
  no workload is played here: Ready only once a run has made data live; Recommenders with a
  status for their generation and their first ModelVersion training),
- the operator's peak RSS (VmHWM),
- API requests the operator sent per object (its own request counter, by verb),
- writes during a quiet period afterwards (apiserver audit log; must be 0).

Reported side by side with the smallest N as the reference (per-object ratios), not asserted.

    .venv/bin/python benchmarks/operator_scale.py --sizes 50 200 500 --quiet 60
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from testbed import controlplane  # noqa: E402
from testbed.processes import free_port  # noqa: E402

FV = {
    "apiVersion": "recsys.dev/v1alpha1",
    "kind": "FeatureView",
    "spec": {
        "entity": {"name": "user", "joinKeys": ["user_id"]},
        "source": {"path": "s3://data/users/"},
        "features": [{"name": "age", "dtype": "Int64"}],
        "onlineStore": {"redis": {"url": "redis://redis:6379/0"}},
        "materialization": {"cronJob": {"schedule": "0 3 * * *"}},
    },
}


def objects(i: int) -> list[dict[str, Any]]:
    users = json.loads(json.dumps(FV)) | {"metadata": {"name": f"r{i}-users"}}
    items = json.loads(json.dumps(FV)) | {"metadata": {"name": f"r{i}-items"}}
    items["spec"]["entity"] = {"name": "item", "joinKeys": ["item_id"]}
    rec = {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "Recommender",
        "metadata": {"name": f"r{i}"},
        "spec": {
            "interactions": {"path": "s3://data/interactions/"},
            "featureViews": {"user": [{"name": f"r{i}-users"}], "item": [{"name": f"r{i}-items"}]},
            "stores": {
                "redis": {"url": "redis://redis:6379/0"},
                "artifacts": {"storageUri": f"s3://models/r{i}"},
            },
        },
    }
    return [users, items, rec]


def settled(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    if st.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    conds = {c["type"]: c for c in st.get("conditions", [])}
    if obj["kind"] == "FeatureView":
        ready = conds.get("Ready", {})
        return ready.get("status") == "True" or ready.get("reason") == "NotMaterialized"
    # Waiting: its first ModelVersion is training (the test plays no workload here).
    progressing = conds.get("Progressing", {})
    return progressing.get("status") == "True" and "(Training)" in progressing.get("message", "")


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def api_requests(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("recsys_operator_api_requests_total{"):
            verb = line.split('verb="')[1].split('"')[0]
            out[verb] = out.get(verb, 0) + float(line.rsplit(" ", 1)[1])
    return out


def writes_since(audit: Path, since: float, ns: str) -> list[str]:
    found = []
    for line in audit.read_text().splitlines():
        e = json.loads(line)
        if not e.get("userAgent", "").startswith(("recsys-operator", "kopf")):
            continue
        if e.get("objectRef", {}).get("namespace") != ns:
            continue
        if dt.datetime.fromisoformat(e["requestReceivedTimestamp"]).timestamp() >= since:
            ref = e.get("objectRef", {})
            found.append(
                f"{e['verb']} {ref.get('resource')}/{ref.get('name')} "
                f"{ref.get('subresource', '')}".strip()
            )
    return found


def run(n: int, quiet: float, workers: int) -> dict[str, Any]:
    cp = controlplane.start()
    try:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
        ns = "bench"
        cp.kubectl("create", "namespace", ns)
        port = free_port()
        log = open(cp.workdir / "operator.log", "wb")  # noqa: SIM115 - lives as long as the process
        op = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recsys_operator",
                "--namespace",
                ns,
                "--metrics-port",
                str(port),
                "--health-port",
                "0",
                "--workers",
                str(workers),
            ],
            env={**os.environ, "KUBECONFIG": str(cp.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        time.sleep(3)
        docs = [o for i in range(n) for o in objects(i)]
        t0 = time.monotonic()
        for start in range(0, len(docs), 300):
            batch = {"apiVersion": "v1", "kind": "List", "items": docs[start : start + 300]}
            cp.kubectl(
                "apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(batch), timeout=600
            )
        applied = time.monotonic() - t0
        while True:
            items = []
            for kind in ("featureviews", "recommenders"):
                items += json.loads(
                    cp.kubectl("get", kind, "-n", ns, "-o", "json", timeout=300).stdout
                )["items"]
            done = sum(settled(o) for o in items)
            if done == 3 * n:
                break
            if time.monotonic() - t0 > 1800:
                raise TimeoutError(f"only {done}/{3 * n} settled after 30 min")
            time.sleep(1)
        settle = time.monotonic() - t0
        requests = api_requests(port)
        quiet_from = time.time()
        time.sleep(quiet)
        time.sleep(2)
        quiet_writes = writes_since(cp.audit_log, quiet_from, ns)
        peak = rss_peak_kib(op.pid)
        os.killpg(op.pid, signal.SIGTERM)
        op.wait(30)
        total = sum(requests.values())
        return {
            "recommenders": n,
            "objects": 3 * n,
            "apply_s": round(applied, 1),
            "settled_s": round(settle, 1),
            "peak_rss_mib": round(peak / 1024, 1),
            "requests": requests,
            "requests_per_object": round(total / (3 * n), 2),
            "quiet_s": quiet,
            "quiet_writes": len(quiet_writes),
            "quiet_write_list": quiet_writes,
        }
    finally:
        cp.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--quiet", type=float, default=60)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    rows = [run(n, args.quiet, args.workers) for n in args.sizes]
    ref = rows[0]
    print(
        f"{'N':>5} {'objects':>7} {'settled s':>9} {'s/obj ratio':>11} {'peak RSS MiB':>12} "
        f"{'req/obj':>7} {'req/obj ratio':>13} {'quiet writes':>12}"
    )
    for r in rows:
        per_obj = r["settled_s"] / r["objects"]
        ref_per_obj = ref["settled_s"] / ref["objects"]
        print(
            f"{r['recommenders']:>5} {r['objects']:>7} {r['settled_s']:>9} "
            f"{per_obj / ref_per_obj:>11.2f} {r['peak_rss_mib']:>12} "
            f"{r['requests_per_object']:>7} "
            f"{r['requests_per_object'] / ref['requests_per_object']:>13.2f} "
            f"{r['quiet_writes']:>12}"
        )
        for w in r["quiet_write_list"][:20]:
            print(f"      quiet write: {w}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator_scale.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
