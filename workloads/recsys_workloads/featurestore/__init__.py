"""The online feature store on Redis: value codec, bulk writer and reader (the key layout and
the pointer are ``recsys_contract.keyspace``'s).

``recsys_workloads.materialize`` writes FeatureViews through it; the gateway reads them with
:func:`recsys_workloads.featurestore.reader.read_online_features`.
"""
