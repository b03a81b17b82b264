"""What runs inside the pods that recsys-operator creates: the offline and online loop halves."""

import fsspec

# pvc://CLAIM/path for every fsspec call of every workload (see recsys_workloads.pvc); by class
# path, so the module loads on first use.
fsspec.register_implementation("pvc", "recsys_workloads.pvc.PvcFileSystem", clobber=True)
