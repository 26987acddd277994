"""Model runtimes: the BitNet b1.58 decoder, a BERT-style encoder and an MLP classifier."""

from bitnet_edge.sdk.models.loader import load_model

__all__ = ["load_model"]
