"""Importers (Hugging Face, GGUF, npz) and the converter to the bitnet-edge model format."""
