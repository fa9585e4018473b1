"""Kronecker-factor capture: which layers are preconditioned (their A and G shapes), the rows of A
and G a forward and backward produce, and the hooks that accumulate ``rowsᵀ rows``.

Modules: ``layers`` (one small class per layer type: ``LayerSpec``, ``find_layers``, rows of A
and G, samples per call), ``collector`` (``FactorCollector``, ``capture_factors``).
Imports only torch and ``thor_planner.utils``; must not import partition, inversion, timing,
planning or optim (the runtime builds on it, not the other way round).
"""
