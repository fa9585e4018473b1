"""Statistics capture: which layers are preconditioned (their A and G shapes), the rows of A and G
a forward and backward produce, the hooks that accumulate ``rowsᵀ rows``, and, for the peer
optimizers (Distributed Shampoo, SOAP), each parameter's gradient on a few batches and the
per-block statistics ``L`` and ``R`` they keep.

Modules: ``layers`` (one small class per layer type: ``LayerSpec``, ``find_layers``, rows of A
and G, samples per call), ``collector`` (``FactorCollector``, ``capture_factors``),
``gradient_stats`` (``capture_gradients``, ``BlockStack``, ``block_stacks``, ``matrix_view``).
Imports only torch, ``thor_planner.utils``, ``partition`` and ``targets``; must not import
inversion, timing, planning or optim (the runtime builds on it, not the other way round).
"""
