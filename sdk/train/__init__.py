"""Training a small ternary language model on the build host (``bitnet-edge train-lm``).

Imported only by the builder's CLI and the demo: devices never train.  numpy only (ADR 0019).
"""
