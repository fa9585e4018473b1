"""How long things take on a device: timing a network's inversion per candidate split and one
training step, a peer optimizer's refresh per candidate block size, choosing the backend per block
size by measurement, device profiles, the cost model fitted to them, and predicting a plan's
timings from a profile.

Modules: ``candidates`` (measurement), ``refresh`` (Distributed Shampoo's and SOAP's refresh per
block size), ``backend_choice`` (accuracy-checked per-size choice), ``device_profile`` (measure,
save, load), ``costmodel``, ``prediction``. Imports inversion, capture, targets, partition and
utils; must not import planning, report, optim or the profiler.
"""
