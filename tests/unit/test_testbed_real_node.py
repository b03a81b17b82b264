"""The real node's pure decisions: containerd's config edited key by key (and refused when its
defaults moved), and a pod network that routes only to the Service CIDR."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from testbed.controlplane import SERVICE_CIDR
from testbed.processes import ComponentFailed
from testbed.real_node import PodNetwork, _cni_conflist, containerd_config

DEFAULT = """\
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/opt/cni/bin"
"""


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(
            {("", "root"): '"/r"'}, {'root = "/r"', 'state = "/run/containerd"'}, id="top level"
        ),
        pytest.param(
            {("grpc", "address"): '"/w/c.sock"'}, {'  address = "/w/c.sock"'}, id="in a section"
        ),
        pytest.param(
            {('plugins."io.containerd.grpc.v1.cri".cni', "bin_dir"): '"/usr/lib/cni"'},
            {'      bin_dir = "/usr/lib/cni"', '    sandbox_image = "registry.k8s.io/pause:3.6"'},
            id="nested section, indentation kept, others untouched",
        ),
    ],
)
def test_each_setting_replaces_its_key_in_its_section(
    settings: dict[tuple[str, str], str], expected: set[str]
) -> None:
    lines = set(containerd_config(DEFAULT, settings).splitlines())
    assert expected <= lines


@pytest.mark.parametrize(
    ("default", "settings", "message"),
    [
        pytest.param(DEFAULT, {("grpc", "root"): '"/x"'}, "lacks", id="key in another section"),
        pytest.param(
            DEFAULT, {('plugins."io.containerd.grpc.v1.cri"', "nope"): "1"}, "lacks", id="absent"
        ),
        pytest.param(
            'root = "/again"\n' + DEFAULT, {("", "root"): '"/r"'}, "twice", id="set twice"
        ),
    ],
)
def test_defaults_that_moved_are_refused(
    default: str, settings: dict[tuple[str, str], str], message: str
) -> None:
    with pytest.raises(ComponentFailed, match=message):
        containerd_config(default, settings)


def test_pods_are_routed_to_the_service_cidr_only() -> None:
    net = PodNetwork("br-test", ipaddress.IPv4Network("10.213.7.0/24"))
    plugins: Any = _cni_conflist(net, Path("/w/ipam"))["plugins"]
    (bridge,) = plugins
    assert bridge["bridge"] == "br-test"
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["routes"] == [{"dst": SERVICE_CIDR}]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.213.7.0/24", "gateway": "10.213.7.1"}]]
    assert bridge["ipam"]["dataDir"] == "/w/ipam"
    assert net.gateway == "10.213.7.1"
