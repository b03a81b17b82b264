{{/*
The rules the operator uses, and no more. The same list goes into the ClusterRole (all
namespaces) or into a Role per watched namespace. Each rule names the code that needs it;
tests/integration/test_chart.py runs the operator on exactly these rules and fails on any 403.
*/}}
{{- define "recsys-operator.rules" -}}
# kopf watches the three kinds into the cache the reconcilers read; patch: server-side apply
# of the operator's finalizer alone (metadata.finalizers, never the spec), which keeps a
# FeatureView until its Redis keyspace is deleted, and a Recommender until its keyspace (and,
# with retentionPolicy Delete, its artifacts) is. A Recommender being deleted is read once
# more (get) before each cleanup step, so a stale cached copy never repeats one.
- apiGroups: ["recsys.dev"]
  resources: ["recommenders"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["recsys.dev"]
  resources: ["featureviews"]
  verbs: ["list", "watch", "patch"]
# A Recommender creates a ModelVersion per training run (get: only after a create conflict)
# and prunes old ones.
- apiGroups: ["recsys.dev"]
  resources: ["modelversions"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Everything observed goes to status (merge patch); the spec is the user's.
- apiGroups: ["recsys.dev"]
  resources: ["featureviews/status", "modelversions/status", "recommenders/status"]
  verbs: ["patch"]
# Children carry blockOwnerDeletion owner references to these kinds; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift) require this to set them.
- apiGroups: ["recsys.dev"]
  resources: ["featureviews/finalizers", "modelversions/finalizers", "recommenders/finalizers"]
  verbs: ["update"]
# Training, index and backfill Jobs: created once (Jobs are immutable; get: only after a create
# conflict), watched for the outcome; a deleted FeatureView's or Recommender's runs are deleted
# before its keyspace, so none writes it afterwards; a Recommender's cleanup Job (retentionPolicy
# Delete) removes its artifacts.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Materialization and drift-check CronJobs: server-side apply (patch; create when the object
# is new); a drift CronJob goes when spec.drift does.
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Triton and gateway Deployments: applied, watched for availability, removed when unused.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# serving.*.autoscaling's HorizontalPodAutoscalers, and the PodDisruptionBudgets of serving
# Deployments with two or more pods: applied, watched into the cache, removed when unwanted.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Rendered workload configs (a replaced Triton's goes with it), watched into the cache.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Triton, gateway and torchrun-rendezvous Services, watched into the cache.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# A finished Job's pods carry the workload's JSON summary in their termination message.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- with .Values.rbac.redisPasswordSecrets }}
# The Secrets Recommenders name in spec.stores.redis.passwordSecretRef, and only these, read by
# name to publish the routing table and read the gateways' heartbeats and counters.
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
# Events for kubectl describe.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
