"""Pre-call learned router: embed the request, score "the large model is needed", threshold it.

Modules: :mod:`.config` (policy type ``learned``), :mod:`.embedder` (all-MiniLM-L6-v2, offline),
:mod:`.classifiers` (logreg / kNN / MLP over embeddings, numpy inference), :mod:`.router`
(:class:`LearnedRouter`, the artifact), :mod:`.strategy`. Offline tools, off the request path:
:mod:`.offline.training`, :mod:`.offline.metrics` (RouteLLM's APGR / CPT), :mod:`.offline.cli`
(``slm-gateway router train|eval``).
"""
