"""The real parts that tests, benchmarks and the local demo run against: a Kubernetes control
plane built from Go modules, redis-server and tritonserver, each started on free loopback ports."""
