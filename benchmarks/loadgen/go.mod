module recsys-operator/benchmarks/loadgen

go 1.26
