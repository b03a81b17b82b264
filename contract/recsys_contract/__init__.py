"""The documents that cross the operator/workload boundary, one module each, imported by both.

The operator renders each workload's config by instantiating these models; the workload parses
its config with the same model; the summary a workload writes to its termination message is a
model here too, which the operator reads back. Redis keys are built in one place
(:mod:`recsys_contract.keyspace`) by everything that reads or writes them. A field renamed on
one side is therefore renamed on both, and ``tests/unit/test_operator_workload_contract.py``
renders every config from the examples and parses it.

Only pydantic and the standard library: the operator's image imports this package and carries
none of the workloads' heavy dependencies (torch, pandas, pyarrow, redis).

    base          the config base (camelCase, unknown fields refused) and the wire dump
    formats       Go durations and URI joining, the formats both sides read
    termination   exit codes and the termination message's envelope
    keyspace      every Redis key, the FeatureView pointer and the index alias
    materialize   the materialization Job's config and summary
    train         the training Job's config, summary and headline metric names
    index         the index build Job's config and summary
    repository    the Triton repository builder's config and summary
    history       the history seeding Job's config and summary
    gateway       the gateway's config and its routing table
"""
