"""A real node for the testbed: containerd, a kubelet and kube-proxy that run pods in containers.

The control plane (``controlplane.py``) keeps its kwok-played fake GPU node for the many fast
tests; this module adds one node that really runs containers, for the tests that must show a
pod works (the chart's operator pod, the workloads' Jobs). It needs root, Debian's
``containerd``, ``runc``, ``containernetworking-plugins`` and ``iptables`` (``make
realnode-deps``), and the kubelet, kube-proxy and ``pause`` that ``build.sh`` builds.

Order of use::

    network = PodNetwork.create()                 # the bridge and its gateway address
    cp = controlplane.start(address=network.gateway)
    node = real_node.start(cp, network, images=[...])
    ...
    node.stop(); cp.stop(); network.delete()

``start_with_control_plane()`` does the three steps and ``RealNodeTestbed.stop()`` undoes them.

What was chosen, and why:

- **Pod network: CNI ``bridge`` + ``host-local``.** Pods get addresses on a bridge of their own
  with a /24 of their own; the bridge's gateway address is this machine's. The pods get a route
  to the Service CIDR only, not a default route, so nothing a pod sends can leave the machine
  (everything they need is on this host: the apiserver, Redis, each other). One node needs no
  overlay; ``host-local`` keeps its leases under the node's workdir. The bridge plugin, as
  gateway, turns on this machine's ``net.ipv4.ip_forward`` (as podman does): a Service whose
  endpoints are pods is reached through the host.
- **The apiserver on the gateway address.** A pod's network namespace has its own loopback, so
  an apiserver on 127.0.0.1 cannot be reached from a pod. The control plane is started bound
  to (and advertising) the gateway address, which this machine and its pods both reach, so the
  ``kubernetes`` Service's endpoint is one a pod can reach, and in-cluster configuration works
  as on any cluster. The bridge therefore exists before the control plane starts.
- **Services: kube-proxy in iptables mode**, from the same kubernetes module as the control
  plane, the mode every distribution supports (nf_tables backend here). It needs root and
  writes this machine's iptables; ``stop()`` runs ``kube-proxy --cleanup``. Only one real node
  can run on a machine at a time (a lock file), since two kube-proxies would fight over the
  same chains.
- **Cluster DNS: CoreDNS** (``cluster_dns.py``), built from its Go module with only the
  plugins it uses, on the bridge's gateway address, which the kubelet gives every pod as its
  nameserver: the operator's gateway finds each version's Triton as
  ``<name>.<namespace>.svc``, as on any cluster. It answers only for ``cluster.local`` (no
  ``forward``), so a name outside the cluster fails at once instead of leaving; Redis and the
  S3 store, which run on this machine rather than in pods, are reached by the address the
  test gives (the gateway address), the apiserver through ``KUBERNETES_SERVICE_HOST``.
- **Credentials.** The kubelet uses a client certificate for ``system:node:<name>`` in
  ``system:nodes`` from the testbed's client CA, so the apiserver's Node authorizer and
  NodeRestriction admission apply to it as on a real cluster; kube-proxy is
  ``system:kube-proxy``. The kubelet's own API (logs, exec, resource metrics) listens on the
  bridge's gateway address (its node IP) with a serving certificate from the testbed's serving
  CA, and accepts only client certificates from the client CA.
- **Resource metrics: metrics-server** (``metrics_server.py``), built from its Go module and
  registered as the ``metrics.k8s.io`` APIService, because that is what the
  HorizontalPodAutoscaler controller reads CPU from on any cluster; an equivalent written here
  would test nothing users run. It runs on this machine, not as a pod, like the rest of the
  control plane, and verifies the kubelet's certificate.
- **containerd** from ``containerd config default`` with its own root, state and socket, and
  the changes this machine needs: ``restrict_oom_score_adj`` (nothing here may lower an
  oom_score_adj), the local ``pause`` image as the sandbox image (no image can be pulled),
  Debian's CNI plugin directory, netns mounts under its state directory (so cleanup finds
  them). Its root (images, snapshots) is a cache under ~/.cache/recsys-operator/realnode: an
  image is imported from podman once per podman image ID, so a warm start imports nothing,
  and an image rebuilt after a code change sends containerd only the layers it lacks
  (``oci_export.py``: the torch layers stay; ``podman save`` would send all of them).
- **kubelet** with the cgroupfs driver and no QoS cgroups or node-allocatable enforcement
  (this machine's cgroups are a v1/v2 hybrid that it does not manage), no eviction and no
  image garbage collection (the imported images cannot be pulled back).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

if __package__ in (None, ""):  # run as a script: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from testbed import cluster_dns, controlplane, oci_export
from testbed.controlplane import SERVICE_CIDR, ControlPlane, kubeconfig_for
from testbed.pki import issue_client, issue_server
from testbed.processes import (
    ComponentFailed,
    ProcessGroup,
    free_port,
    run_until_interrupted,
    wait_until,
)

CACHE = Path(os.environ.get("RECSYS_CACHE", Path.home() / ".cache" / "recsys-operator"))
#: One real node per machine: its kube-proxy owns this machine's KUBE-* iptables chains.
LOCK = CACHE / "realnode.lock"
NODE_NAME = "testbed-node-0"
#: The label the node registers with; pods meant for it select it.
NODE_LABEL = ("recsys.dev/testbed-node", "real")
#: The pod network's bridge and subnet; a /24 chosen clear of podman's 10.88.0.0/16.
BRIDGE = "recsys-br0"
POD_SUBNET = "10.213.0.0/24"
CNI_BIN_DIR = Path("/usr/lib/cni")
PAUSE_IMAGE = "localhost/recsys-pause"
#: Debian packages the real node runs (``make realnode-deps`` installs them).
PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    str(CNI_BIN_DIR / "bridge"): "containernetworking-plugins",
}


def _run(argv: Sequence[str], *, timeout: float = 60) -> str:
    """Run a short command; raise ComponentFailed with its output when it fails."""
    try:
        result = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ComponentFailed(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        raise ComponentFailed(
            f"{' '.join(argv)} exited with {result.returncode}: "
            f"{(result.stderr or result.stdout).decode(errors='replace').strip()[-2000:]}"
        )
    return result.stdout.decode(errors="replace")


def missing_packages() -> list[str]:
    """The Debian packages of PACKAGES whose commands are not installed."""
    missing = {
        pkg
        for cmd, pkg in PACKAGES.items()
        if not (Path(cmd).exists() if cmd.startswith("/") else shutil.which(cmd))
    }
    return sorted(missing)


def check_host() -> None:
    """Fail at once, saying the fix, when this machine cannot run the node."""
    if os.geteuid() != 0:
        raise ComponentFailed("the real node needs root (containerd, network namespaces, iptables)")
    missing = missing_packages()
    if missing:
        raise ComponentFailed(
            f"the real node needs the Debian packages {', '.join(missing)}: run "
            "`make realnode-deps`"
        )


@dataclass
class PodNetwork:
    """The pods' bridge with this machine's gateway address on it, and the lock that makes it
    (and the node) the only one on this machine. Created before the control plane, whose
    apiserver listens on ``gateway``."""

    bridge: str
    subnet: ipaddress.IPv4Network
    _lock: IO[str] | None = None

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @classmethod
    def create(
        cls, bridge: str = BRIDGE, subnet: str = POD_SUBNET, lock_timeout: float = 600
    ) -> PodNetwork:
        check_host()
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK.open("w")
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise ComponentFailed(
                        f"another real node holds {LOCK} for over {lock_timeout:.0f} s"
                    ) from None
                time.sleep(1)
        net = cls(bridge, ipaddress.IPv4Network(subnet), lock)
        try:
            # A bridge left by a killed run: ours by name, and we hold the lock.
            net._delete_bridge()
            _run(["ip", "link", "add", bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{net.gateway}/{net.subnet.prefixlen}", "dev", bridge])
            _run(["ip", "link", "set", bridge, "up"])
        except BaseException:
            net.delete()
            raise
        return net

    def _delete_bridge(self) -> None:
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _run(["ip", "link", "del", self.bridge])

    def delete(self) -> None:
        with contextlib.suppress(ComponentFailed):
            self._delete_bridge()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


def _cni_conflist(network: PodNetwork, ipam_dir: Path) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "recsys-testbed",
        "plugins": [
            {
                "type": "bridge",
                "bridge": network.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": str(network.subnet), "gateway": network.gateway}]],
                    # The Service CIDR only: no default route, so nothing leaves the machine.
                    "routes": [{"dst": SERVICE_CIDR}],
                },
            }
        ],
    }


#: ``containerd config default`` keys set for the node, by (section, key). Every one must be
#: found exactly once, so a containerd whose defaults moved fails here and not at runtime.
def _containerd_settings(
    workdir: Path, root: Path, sandbox_image: str
) -> dict[tuple[str, str], str]:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return {
        ("", "root"): json.dumps(str(root)),
        ("", "state"): json.dumps(str(workdir / "state")),
        ("grpc", "address"): json.dumps(str(workdir / "containerd.sock")),
        (cri, "restrict_oom_score_adj"): "true",
        (cri, "sandbox_image"): json.dumps(sandbox_image),
        (cri, "netns_mounts_under_state_dir"): "true",
        (f"{cri}.cni", "bin_dir"): json.dumps(str(CNI_BIN_DIR)),
        (f"{cri}.cni", "conf_dir"): json.dumps(str(workdir / "cni")),
        # runc's state and containerd's opt directory: the node's too, not /run's and /opt's.
        (f"{cri}.containerd.runtimes.runc.options", "Root"): json.dumps(str(workdir / "runc")),
        ('plugins."io.containerd.internal.v1.opt"', "path"): json.dumps(str(workdir / "opt")),
    }


def containerd_config(default: str, settings: dict[tuple[str, str], str]) -> str:
    """``default`` (containerd's own TOML) with each (section, key) of ``settings`` replaced."""
    section, seen, out = "", set(), []
    for line in default.splitlines():
        header = re.match(r"^\s*\[(.+)\]\s*$", line)
        if header:
            section = header.group(1)
        else:
            kv = re.match(r"^(\s*)([A-Za-z0-9_]+) = ", line)
            if kv and (section, kv.group(2)) in settings:
                key = (section, kv.group(2))
                if key in seen:
                    raise ComponentFailed(f"containerd's default config sets {key} twice")
                seen.add(key)
                line = f"{kv.group(1)}{kv.group(2)} = {settings[key]}"
        out.append(line)
    missing = set(settings) - seen
    if missing:
        raise ComponentFailed(f"containerd's default config lacks {sorted(missing)}")
    return "\n".join(out) + "\n"


def _kubelet_config(
    workdir: Path, ca: Path, sock: Path, address: str, serving: tuple[Path, Path]
) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": address,
        "port": free_port(),
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        "readOnlyPort": 0,
        # From the serving CA, so its callers (the apiserver, metrics-server) can verify it.
        "tlsCertFile": str(serving[0]),
        "tlsPrivateKeyFile": str(serving[1]),
        "containerRuntimeEndpoint": f"unix://{sock}",
        "podLogsDir": str(workdir / "pod-logs"),
        # The logs/exec API: client certificates of the testbed's client CA only.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        # This machine's cgroups (a v1/v2 hybrid, not systemd's) are not the kubelet's to manage.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "localStorageCapacityIsolation": False,
        "evictionHard": {},
        # Imported images cannot be pulled again: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "5s",
        # CoreDNS (cluster_dns.py) on the node's address: every pod's nameserver.
        "clusterDNS": [address],
        "clusterDomain": cluster_dns.DOMAIN,
    }


def _kube_proxy_config(kubeconfig: Path, network: PodNetwork) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        "clusterCIDR": str(network.subnet),
        "nodePortAddresses": [f"{network.gateway}/32"],
        # Leave this machine's conntrack table size alone.
        "conntrack": {"maxPerCore": 0},
    }


@dataclass
class RealNode:
    """A started node. ``stop()`` stops what it started (pods through the kubelet, then the
    kubelet, any container left, kube-proxy with its rules, containerd), removes the kubelet's
    chains and host files, unmounts and deletes the workdir. Left behind: empty directories
    that containerd and libcni create at compiled-in paths (/run/containerd/s,
    /var/lib/cni/results) and ``net.ipv4.ip_forward`` on."""

    name: str
    control_plane: ControlPlane
    network: PodNetwork
    workdir: Path
    procs: ProcessGroup
    ctr_argv: list[str]
    bin_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        """The kubelet's kubeconfig: the node's client certificate (system:node:<name>)."""
        return self.workdir / "kubelet.kubeconfig"

    def ctr(self, *args: str, timeout: float = 60) -> str:
        return _run([*self.ctr_argv, *args], timeout=timeout)

    def stop(self) -> None:
        cp = self.control_plane
        # The kubelet stops what no pod of the API needs any more: ask it to, briefly.
        with contextlib.suppress(Exception):
            cp.kubectl(
                "delete",
                "pods",
                "--all-namespaces",
                "--field-selector",
                f"spec.nodeName={self.name}",
                "--grace-period=0",
                "--force",
                "--wait=false",
                check=False,
                timeout=20,
            )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self._tasks():
                time.sleep(0.5)
        kubelet = next((p for p in self.procs.processes if p.name == "kubelet"), None)
        if kubelet is not None:
            kubelet.stop()
        # Whatever is left (a pod the kubelet did not get to): its shims outlive containerd.
        with contextlib.suppress(ComponentFailed):
            self.stop_leftovers()
        self.procs.stop_all()  # kube-proxy, containerd
        with contextlib.suppress(ComponentFailed):
            _run([str(self.bin_dir / "kube-proxy"), "--cleanup"], timeout=30)
        _remove_kubelet_chains()
        _remove_kubelet_host_files(self.workdir)
        _unmount_under(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_leftovers(self) -> None:
        """Kill and remove every container in containerd's CRI namespace."""
        for task in self._tasks():
            with contextlib.suppress(ComponentFailed):
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._tasks():
            time.sleep(0.2)
        for task in self._tasks():
            with contextlib.suppress(ComponentFailed):
                self.ctr("tasks", "delete", "--force", task)
        for container in self.ctr("containers", "ls", "-q").split():
            with contextlib.suppress(ComponentFailed):
                self.ctr("containers", "delete", container)

    def _tasks(self) -> list[str]:
        out = self.ctr("tasks", "ls", "-q", timeout=10)
        return out.split()


#: What a kubelet writes outside its --root-dir and podLogsDir (paths compiled into it).
DEVICE_PLUGIN_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")
CONTAINER_LOG_LINKS = Path("/var/log/containers")


def _remove_kubelet_host_files(workdir: Path) -> None:
    """The kubelet's device-plugin socket, and its links to the container logs under
    ``workdir``; directories are removed only when that leaves them empty."""
    with contextlib.suppress(FileNotFoundError):
        DEVICE_PLUGIN_SOCKET.unlink()
    prefix = str(workdir.resolve()) + "/"
    with contextlib.suppress(FileNotFoundError):
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(prefix):
                link.unlink()
    for empty in (DEVICE_PLUGIN_SOCKET.parent, DEVICE_PLUGIN_SOCKET.parent.parent):
        with contextlib.suppress(OSError):
            empty.rmdir()


#: The chains a kubelet adds to this machine's iptables (kube-proxy --cleanup leaves them).
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY")


def _remove_kubelet_chains() -> None:
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = subprocess.run(
                [tool, "-t", table, "-S"], capture_output=True, text=True, check=False
            ).stdout.splitlines()
            for rule in rules:
                words = shlex.split(rule)
                if words[:1] == ["-A"] and any(f"-j {c}" in rule for c in KUBELET_CHAINS):
                    subprocess.run([tool, "-t", table, "-D", *words[1:]], check=False)
            for chain in KUBELET_CHAINS:
                if f"-N {chain}" in rules:
                    subprocess.run([tool, "-t", table, "-F", chain], check=False)
                    subprocess.run([tool, "-t", table, "-X", chain], check=False)


def _unmount_under(path: Path) -> None:
    """Unmount (lazily, deepest first) every mount point below ``path``: the kubelet's volumes
    and containerd's netns and rootfs mounts."""
    prefix = str(path.resolve()) + "/"
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _pause_image(bin_dir: Path) -> str:
    """The sandbox image, tagged by the pause binary's content: made once with podman."""
    digest = hashlib.sha256((bin_dir / "pause").read_bytes()).hexdigest()[:12]
    ref = f"{PAUSE_IMAGE}:{digest}"
    if subprocess.run(["podman", "image", "exists", ref], check=False).returncode != 0:
        with tempfile.TemporaryDirectory() as tmp:
            tar = Path(tmp) / "pause.tar"
            with tarfile.open(tar, "w") as out:
                info = out.gettarinfo(str((bin_dir / "pause").resolve()), arcname="pause")
                info.mode, info.uid, info.gid, info.uname, info.gname = 0o755, 0, 0, "", ""
                with open(bin_dir / "pause", "rb") as binary:
                    out.addfile(info, binary)
            _run(["podman", "import", "--change", 'ENTRYPOINT ["/pause"]', str(tar), ref])
    return ref


IMPORTED_LABEL = "dev.recsys.podman-id"


def import_images(ctr_argv: Sequence[str], refs: Sequence[str]) -> list[str]:
    """Import each podman image into containerd's CRI namespace unless the image there was
    imported from the same podman image ID; return the refs that were imported.

    The images to import go in one stream, so the layers they share (the Triton image is
    built on the trainer's, GBs of torch) are sent once, and only the layers containerd lacks
    are sent at all (:mod:`testbed.oci_export`): a change to the project's code re-sends its
    own small top layers, not torch. Where podman's storage cannot be read that way, the
    stream is ``podman save`` of the whole images."""
    listing = _run([*ctr_argv, "images", "ls"], timeout=30).splitlines()[1:]
    labels = {cols[0]: cols[-1] for cols in (line.split() for line in listing) if cols}
    todo: dict[str, str] = {}
    for ref in refs:
        image_id = _run(["podman", "image", "inspect", "--format", "{{.Id}}", ref]).strip()
        if f"{IMPORTED_LABEL}={image_id}" not in labels.get(ref, "").split(","):
            todo[ref] = image_id
    if not todo:
        return []
    try:
        _import_layers(ctr_argv, todo)
    except oci_export.NotExportable as exc:
        print(f"[realnode] sending whole images ({exc})", file=sys.stderr)
        _import_saved(ctr_argv, list(todo))
    for ref, image_id in todo.items():
        _run([*ctr_argv, "images", "label", ref, f"{IMPORTED_LABEL}={image_id}"])
    return list(todo)


def _import_layers(ctr_argv: Sequence[str], todo: dict[str, str]) -> None:
    store = json.loads(_run(["podman", "info", "--format", "{{json .Store}}"]))
    if store.get("graphDriverName") != "overlay":
        raise oci_export.NotExportable(f"podman's storage driver is {store.get('graphDriverName')}")
    root = Path(store["graphRoot"])
    images = [oci_export.stored_image(root, ref, image_id) for ref, image_id in todo.items()]
    present = set(_run([*ctr_argv, "content", "ls", "-q"], timeout=60).split())
    with _importing(ctr_argv) as stream:
        sent = oci_export.write_layout(stream, images, present)
    print(f"[realnode] imported {', '.join(todo)}: {len(sent)} layers sent", file=sys.stderr)


def _import_saved(ctr_argv: Sequence[str], refs: list[str]) -> None:
    save = subprocess.Popen(
        ["podman", "save", "--multi-image-archive", "--format", "docker-archive", *refs],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert save.stdout is not None
    with _importing(ctr_argv) as stream:
        shutil.copyfileobj(save.stdout, stream, 1 << 20)
    if save.wait(timeout=60) != 0:
        raise ComponentFailed(f"podman save {' '.join(refs)} failed: {save.stderr.read()!r}")


@contextlib.contextmanager
def _importing(ctr_argv: Sequence[str], timeout: float = 1800) -> Iterator[IO[bytes]]:
    """A stream into ``ctr images import -``; closing it waits for containerd to unpack."""
    with tempfile.TemporaryFile() as log:  # not a pipe: nothing reads it while we write
        ctr = subprocess.Popen(
            [*ctr_argv, "images", "import", "-"],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert ctr.stdin is not None
        broken = False
        try:
            try:
                yield ctr.stdin
                ctr.stdin.close()
            except BrokenPipeError:
                broken = True  # ctr stopped reading; its output says why
            ctr.wait(timeout=timeout)
        except BaseException:
            ctr.kill()
            ctr.wait()
            raise
        if ctr.returncode != 0 or broken:
            log.seek(0)
            raise ComponentFailed(
                f"ctr images import exited with {ctr.returncode}: "
                f"{log.read().decode(errors='replace')[-2000:]}"
            )


def start(
    cp: ControlPlane,
    network: PodNetwork,
    images: Sequence[str] = (),
    workdir: Path | None = None,
) -> RealNode:
    """Add a node to the running control plane ``cp`` (started with ``address=network.gateway``)
    and return once it is Ready, with ``images`` (podman references) in its containerd."""
    t0 = time.monotonic()
    check_host()
    if cp.address != network.gateway:
        raise ComponentFailed(
            f"the control plane listens on {cp.address}, which pods cannot reach: start it with "
            f"controlplane.start(address={network.gateway!r})"
        )
    bin_dir = cp.bin_dir
    for binary in ("kubelet", "kube-proxy", "pause"):
        if not (bin_dir / binary).exists():
            raise ComponentFailed(
                f"{bin_dir / binary} is missing: run `bash tests/testbed/build.sh realnode`"
            )
    workdir = workdir or Path(tempfile.mkdtemp(prefix="recsys-node-"))
    procs = ProcessGroup(workdir / "logs")
    timings: dict[str, float] = {}
    ctr_argv = ["ctr", "--address", str(workdir / "containerd.sock"), "--namespace", "k8s.io"]
    node = RealNode(NODE_NAME, cp, network, workdir, procs, ctr_argv, bin_dir, timings)
    try:
        sandbox = _pause_image(bin_dir)
        (workdir / "cni").mkdir(parents=True)
        (workdir / "cni" / "10-recsys.conflist").write_text(
            json.dumps(_cni_conflist(network, workdir / "cni-ipam"), indent=1)
        )
        root = CACHE / "realnode" / "containerd-root"
        root.mkdir(parents=True, exist_ok=True)
        config = containerd_config(
            _run(["containerd", "config", "default"]),
            _containerd_settings(workdir, root, sandbox),
        )
        (workdir / "containerd.toml").write_text(config)
        containerd = procs.start(
            "containerd", ["containerd", "--config", str(workdir / "containerd.toml")]
        )
        wait_until(
            containerd, lambda: (workdir / "containerd.sock").exists(), 30, "serving its socket"
        )
        wait_until(
            containerd,
            lambda: (
                subprocess.run(
                    [*ctr_argv, "version"], capture_output=True, check=False, timeout=5
                ).returncode
                == 0
            ),
            30,
            "answering",
        )
        timings["containerd"] = time.monotonic() - t0
        # Containers a killed run left in the cached root: no pod of this cluster owns them.
        node.stop_leftovers()
        import_images(ctr_argv, [sandbox, *images])
        timings["images"] = time.monotonic() - t0

        pki_dir = workdir / "pki"
        ca = cp.pki.serving_ca
        node_cert = issue_client(cp.pki, pki_dir, f"system:node:{NODE_NAME}", "system:nodes")
        proxy_cert = issue_client(cp.pki, pki_dir, "system:kube-proxy")
        node_kubeconfig, proxy_kubeconfig = (
            workdir / "kubelet.kubeconfig",
            workdir / "proxy.kubeconfig",
        )
        node_kubeconfig.write_text(kubeconfig_for(cp.server, ca, *node_cert))
        proxy_kubeconfig.write_text(kubeconfig_for(cp.server, ca, *proxy_cert))
        serving = issue_server(
            cp.pki, pki_dir, f"kubelet-{NODE_NAME}", [network.gateway, NODE_NAME]
        )
        cluster_dns.start(procs, cp, network.gateway, workdir / "dns")
        timings["dns"] = time.monotonic() - t0
        kubelet_config = _kubelet_config(
            workdir, cp.pki.client_ca, workdir / "containerd.sock", network.gateway, serving
        )
        (workdir / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config))
        kubelet = procs.start(
            "kubelet",
            [
                str(bin_dir / "kubelet"),
                f"--config={workdir / 'kubelet.yaml'}",
                f"--kubeconfig={node_kubeconfig}",
                f"--root-dir={workdir / 'kubelet'}",
                f"--cert-dir={workdir / 'kubelet-certs'}",
                f"--hostname-override={NODE_NAME}",
                # The apiserver reaches the kubelet (logs, exec) at its InternalIP; a kubelet
                # refuses a loopback node IP, so it is the bridge's gateway address.
                f"--node-ip={network.gateway}",
                f"--node-labels={NODE_LABEL[0]}={NODE_LABEL[1]}",
                "--v=1",
            ],
        )
        (workdir / "kube-proxy.yaml").write_text(
            yaml.safe_dump(_kube_proxy_config(proxy_kubeconfig, network))
        )
        proxy = procs.start(
            "kube-proxy",
            [str(bin_dir / "kube-proxy"), f"--config={workdir / 'kube-proxy.yaml'}", "--v=1"],
        )
        wait_until(kubelet, lambda: _node_ready(cp, NODE_NAME), 90, "Ready")
        timings["kubelet"] = time.monotonic() - t0
        wait_until(proxy, _proxy_synced, 60, "syncing the Services")
        timings["all"] = time.monotonic() - t0
        return node
    except BaseException:
        node.stop()
        raise


def _node_ready(cp: ControlPlane, name: str) -> bool:
    out = cp.kubectl(
        "get",
        "node",
        name,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        check=False,
    )
    return out.stdout.strip() == "True"


def _proxy_synced() -> bool:
    """kube-proxy has written the ``kubernetes`` Service's rules."""
    out = subprocess.run(
        ["iptables", "-t", "nat", "-S", "KUBE-SERVICES"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "default/kubernetes:https" in out.stdout


@dataclass
class RealNodeTestbed:
    """A pod network, a control plane listening on its gateway, and the node."""

    network: PodNetwork
    control_plane: ControlPlane
    node: RealNode
    startup_seconds: float

    def stop(self) -> None:
        try:
            self.node.stop()
        finally:
            try:
                self.control_plane.stop()
            finally:
                self.network.delete()


def start_with_control_plane(images: Sequence[str] = ()) -> RealNodeTestbed:
    """The three steps of the module docstring; on failure, whatever was started is stopped."""
    t0 = time.monotonic()
    bin_dir = Path(
        _run(["bash", str(controlplane.HERE / "build.sh"), "realnode"], timeout=3600)
        .strip()
        .splitlines()[-1]
    )
    network = PodNetwork.create()
    try:
        cp = controlplane.start(bin_dir=bin_dir, address=network.gateway)
    except BaseException:
        network.delete()
        raise
    try:
        node = start(cp, network, images)
    except BaseException:
        cp.stop()
        network.delete()
        raise
    return RealNodeTestbed(network, cp, node, time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--image", action="append", default=[], help="podman image to import")
    args = parser.parse_args(argv)
    try:
        tb = start_with_control_plane(args.image)
    except ComponentFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"control plane and node up in {tb.startup_seconds:.1f} s ({tb.node.timings})")
    print(f"export KUBECONFIG={tb.control_plane.kubeconfig}")
    print(f"kubectl: {tb.control_plane.kubectl_path}")
    return run_until_interrupted([*tb.control_plane.procs.processes, *tb.node.procs.processes],
                                 tb.stop)  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
