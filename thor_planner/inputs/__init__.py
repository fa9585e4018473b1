"""What a profile or a training run is made of: models (built-in ResNets, small CNNs and MLPs,
BERT masked LMs, byte-level GPT causal LMs, user factories, hubs when they import) and data
(synthetic, digits, text and tokens for masked LMs, the standard library's source and tokens for
causal LMs, factories, image folders).

Modules: ``models`` (:func:`~thor_planner.inputs.models.load_model`), ``data``
(:func:`~thor_planner.inputs.data.load_batches`), ``transformer`` (BERT and ``hf:`` models, the
output-projection rule), ``text`` (byte tokenizer, text split, BERT's masking), ``causal``
(``gpt-tiny``, ``gpt-small``), ``stdlib`` (the standard-library corpus, its file split, next-byte
windows, bits per byte). Imports only ``thor_planner.utils``; must not import capture, timing,
planning, optim or anything above them.
"""
