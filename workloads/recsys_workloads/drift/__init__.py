"""The drift check: does serving still look like what the serving version was trained on?

``python -m recsys_workloads.drift --config PATH``, run by the Recommender's drift CronJob,
with (camelCase, unknown fields refused; everything but the first three has a default)::

    {
      "recommender": "shop.movies",
      "servedLog": {"redisUrl": "redis://redis.shop.svc:6379/0", "keyPrefix": ""},
      "modelArtifactUri": "s3://recsys/movies/models/movies-v3",
      "storageOptions": {},
      "modelVersion": "movies-v3",
      "sampleSize": 10000, "minSampleSize": 100,
      "method": "PSI", "threshold": 0.2,
      "features": ["age", "occupation"], "topFeatures": 5,
      "unseenItemThreshold": null,
      "reference": "interactionRows"
    }

It reads the newest ``sampleSize`` entries of the gateway's served log (``gateway.served_log``,
only ``modelVersion``'s when set), and the serving version's ``profile.json`` and
``encoders.json`` from its artifact (checked against the manifest). Then, in the encoded space
the profile defines (``train.profile``): per user feature, the served values' histogram
against the profile's ``reference`` distribution; the served scores (entries that were not a
fallback, their first ``topK``) against the profile's score deciles; and the shares of served
items and requesting users the model never saw in training. PSI or KL, with empty bins at
``stats.EPSILON`` (``stats``). A feature or the score histogram above ``threshold`` (default
0.2 for PSI, 0.1 for KL) is drift, and so is an unseen-item share above
``unseenItemThreshold`` when set.

The termination message (``runtime``) carries ``drifted``, the top ``topFeatures`` features
by score (each with the bin that moved most: its training and served share), every drifted
feature's name, the score and catalog figures, the method, threshold and epsilon, and the
sample (size, time range, entries scanned, malformed). With fewer than ``minSampleSize``
entries it judges nothing (``judged: false``). Exit codes: 0 done (drift or not), 2 bad input
(the config, a missing or inconsistent artifact), 75 transient (Redis or the store
unreachable). The Redis password comes from ``REDIS_PASSWORD``.
"""
