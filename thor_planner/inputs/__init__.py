"""What a profile or a training run is made of: models (built-in ResNets, small CNNs and MLPs,
user factories, hubs when they import) and data (synthetic, digits, factories, image folders).

Modules: ``models`` (:func:`~thor_planner.inputs.models.load_model`), ``data``
(:func:`~thor_planner.inputs.data.load_batches`). Imports only ``thor_planner.utils``; must not
import capture, timing, planning, optim or anything above them.
"""
