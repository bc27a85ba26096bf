"""Selection: which samples and answer tokens to train on, as pure functions (no Spark).

:mod:`policies` computes tau and each policy's per-row decision and token mask; :mod:`spans` turns token
masks into character spans and back (another tokenizer, the export sidecar).
"""
