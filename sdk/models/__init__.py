"""Model runtimes: the BitNet b1.58 decoder, a BERT-style encoder, an MLP classifier and `graph`
models (conv / fully-connected networks imported from TFLite or ONNX)."""

from bitnet_edge.sdk.models.loader import load_model

__all__ = ["load_model"]
