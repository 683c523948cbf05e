"""Pre-call learned router: embed the request, score "the large model is needed", threshold it.

Modules: :mod:`.embedder` (all-MiniLM-L6-v2, offline), :mod:`.classifiers` (logreg / kNN /
MLP over embeddings, numpy inference), :mod:`.router` (:class:`LearnedRouter`, the artifact),
:mod:`.training`, :mod:`.metrics` (RouteLLM's APGR / CPT), :mod:`.strategy` (policy type
``learned``), :mod:`.cli` (``slm-gateway router train|eval``).
"""
