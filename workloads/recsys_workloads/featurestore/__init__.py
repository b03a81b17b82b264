"""The online feature store on Redis: key layout, value codec, bulk writer and reader.

``recsys_workloads.materialize`` writes FeatureViews through it; the gateway reads them with
:func:`recsys_workloads.featurestore.reader.read_online_features`.
"""
