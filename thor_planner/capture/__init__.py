"""Kronecker-factor capture: which layers are preconditioned (their A and G shapes), the rows of A
and G a forward and backward produce, and the hooks that accumulate ``rowsᵀ rows``.

Modules: ``collector`` (``LayerSpec``, ``find_layers``, ``FactorCollector``, ``capture_factors``).
Imports only torch and ``thor_planner.utils``; must not import partition, inversion, timing,
planning or optim (the runtime builds on it, not the other way round).
"""
