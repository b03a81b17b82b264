"""Test-wide configuration: the fixtures over the real parts live in tests/fixtures/."""

pytest_plugins = [
    "fixtures.kube",
    "fixtures.redis",
    "fixtures.s3",
    "fixtures.triton",
    "fixtures.operator",
    "fixtures.real_node",
]
