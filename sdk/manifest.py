"""The converted-model format (docs/adr/0004-converted-model-format.md).

A converted model is a directory::

    manifest.json         ModelManifest (this module): architecture, config, precision plan, tensor table
    weights.safetensors   every tensor, memory-mapped at load
    tokenizer.json        optional, Hugging Face tokenizers format

Ternary linear weights are stored in the 2-bit compute layout (uint8, (n, row_bytes)),
so loading is a mmap with no repacking; int8 weights as int8 with a float32
per-row scale tensor; everything else as float16/float32.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Field

from bitnet_edge.sdk.chat import ChatTemplate
from bitnet_edge.sdk.schemas import Strict

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Precision",
    "DecoderConfig",
    "EncoderConfig",
    "MlpConfig",
    "GraphOp",
    "GraphValue",
    "GraphNode",
    "GraphConfig",
    "ModelConfig",
    "TensorEntry",
    "SourceInfo",
    "ModelManifest",
    "OutputQuality",
    "PlanQuality",
    "MODEL_NAME",
    "default_model_name",
    "is_model_name",
]

#: a file name the manifests may give: one path component of safe characters (never "", ".", "..",
#: a slash or a leading dot), so installing never writes outside the destination directory
FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
#: a model's name: in the manifest, on the wire (``bne/v1/devices/{id}/desired/{model}``, one topic
#: level) and on the device (one directory name).  bitnet_edge.sdk.wire.protocol re-exports it.
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
FORMAT = "bitnet-edge-model"
FORMAT_VERSION = 1

Precision = Literal["ternary", "int8", "f16", "f32"]


class DecoderConfig(Strict):
    """A BitNet b1.58 / LLaMA-layout decoder (transformers' BitNetForCausalLM and the 1bitLLM style)."""

    architecture: Literal["bitnet"] = "bitnet"
    vocab_size: int = Field(gt=0, description="tokens in the vocabulary")
    hidden_size: int = Field(gt=0, description="model width")
    intermediate_size: int = Field(gt=0, description="FFN width")
    num_hidden_layers: int = Field(gt=0, description="decoder layers")
    num_attention_heads: int = Field(gt=0, description="query heads")
    num_key_value_heads: int = Field(gt=0, description="key/value heads (GQA)")
    head_dim: int = Field(gt=0, description="width of one head")
    max_position_embeddings: int = Field(gt=0, description="context length limit, tokens")
    rms_norm_eps: float = Field(gt=0, description="RMSNorm epsilon")
    rope_theta: float = Field(gt=0, description="RoPE base frequency")
    hidden_act: Literal["relu2", "silu"] = Field(description="FFN activation: relu2 (BitNet) or silu (LLaMA)")
    sub_norms: bool = Field(description="attn_sub_norm before o_proj and ffn_sub_norm before down_proj (BitNet)")
    tie_word_embeddings: bool = Field(description="lm_head shares the embedding matrix")
    bos_token_id: int | None = Field(default=None, description="beginning-of-sequence token")
    eos_token_ids: list[int] = Field(default_factory=list, description="tokens that end generation")


class EncoderConfig(Strict):
    """A BERT/MiniLM-layout sentence encoder."""

    architecture: Literal["bert"] = "bert"
    vocab_size: int = Field(gt=0, description="tokens in the vocabulary")
    hidden_size: int = Field(gt=0, description="model width")
    intermediate_size: int = Field(gt=0, description="FFN width")
    num_hidden_layers: int = Field(gt=0, description="encoder layers")
    num_attention_heads: int = Field(gt=0, description="attention heads")
    max_position_embeddings: int = Field(gt=0, description="longest input, tokens")
    type_vocab_size: int = Field(gt=0, description="token types")
    layer_norm_eps: float = Field(gt=0, description="LayerNorm epsilon")
    hidden_act: Literal["gelu", "gelu_new", "relu"] = Field(description="FFN activation")
    pooling: Literal["mean", "cls"] = Field(default="mean", description="sentence pooling")
    normalize: bool = Field(default=True, description="L2-normalise embeddings")


class MlpConfig(Strict):
    """A feed-forward classifier: Linear -> act -> ... -> Linear."""

    architecture: Literal["mlp"] = "mlp"
    layer_sizes: list[int] = Field(min_length=2, description="input, hidden..., classes")
    activation: Literal["relu", "gelu", "tanh"] = Field(description="between layers")
    input_mean: list[float] | None = Field(default=None, description="per-feature mean to subtract")
    input_std: list[float] | None = Field(default=None, description="per-feature std to divide by")
    class_names: list[str] | None = Field(default=None, description="label of each output")


GraphOp = Literal["conv_2d", "depthwise_conv_2d", "fully_connected", "add", "mul", "concat", "reshape",
                  "transpose", "pad", "max_pool_2d", "avg_pool_2d", "mean", "relu", "relu6", "prelu",
                  "logistic", "tanh", "hard_swish", "softmax"]


class GraphValue(Strict):
    """A graph input or output: its name, shape (batch first) and, for the int8 interface of a
    quantized TFLite model, the affine quantization it had there (real = scale * (q - zero_point))."""

    name: str = Field(min_length=1, description="value name")
    shape: list[int] = Field(min_length=1, description="shape with the batch first (the batch size is free)")
    quant_scale: float | None = Field(default=None, description="source model's int8 scale (information)")
    quant_zero_point: int | None = Field(default=None, description="source model's int8 zero point (information)")


class GraphNode(Strict):
    """One operation of a ``graph`` model.  Activations are NHWC, batch first.  ``inputs`` name graph
    inputs, outputs of earlier nodes, or constant tensors in weights.safetensors."""

    name: str = Field(min_length=1, description="the source model's node / output tensor name (errors name it)")
    op: GraphOp = Field(description="operation")
    inputs: list[str] = Field(min_length=1, description="values or constant tensors, in the op's order")
    output: str = Field(min_length=1, description="the value it produces")
    weight: str | None = Field(default=None, description="conv_2d / fully_connected: (out, kh*kw*in) or (out, in) "
                                                          "weight; depthwise_conv_2d: (c, kh*kw)")
    bias: str | None = Field(default=None, description="(out,) float32 bias tensor")
    kernel: list[int] | None = Field(default=None, description="window [kh, kw] (convs, pools)")
    stride: list[int] | None = Field(default=None, description="[sh, sw] (convs, pools)")
    dilation: list[int] | None = Field(default=None, description="[dh, dw] (convs)")
    pads: list[int] | None = Field(default=None, description="convs, pools: [top, bottom, left, right]; pad: "
                                                             "[before, after] per dimension")
    activation: Literal["none", "relu", "relu6", "relu_n1_to_1", "tanh"] = Field(
        default="none", description="fused activation applied to the output")
    axis: int | None = Field(default=None, description="concat / softmax axis")
    axes: list[int] | None = Field(default=None, description="mean: reduced axes; transpose: permutation")
    shape: list[int] | None = Field(default=None, description="reshape: the new shape after the batch (-1 once)")
    keepdims: bool = Field(default=False, description="mean: keep reduced axes as 1")
    beta: float = Field(default=1.0, description="softmax: exp(beta * x)")
    multiplier: int = Field(default=1, ge=1, description="depthwise_conv_2d: output channels per input channel")


class GraphConfig(Strict):
    """A small graph of conv / fully-connected / elementwise ops imported from TFLite or ONNX."""

    architecture: Literal["graph"] = "graph"
    inputs: list[GraphValue] = Field(min_length=1, description="graph inputs, in call order")
    outputs: list[GraphValue] = Field(min_length=1, description="graph outputs, in order")
    nodes: list[GraphNode] = Field(min_length=1, description="operations in execution order")
    class_names: list[str] | None = Field(default=None, description="label of each output class")


ModelConfig = Annotated[Union[DecoderConfig, EncoderConfig, MlpConfig, GraphConfig],
                        Field(discriminator="architecture")]


class TensorEntry(Strict):
    """One stored tensor.  ``shape`` is the logical shape (out, in) for linear weights."""

    name: str = Field(description="tensor name in weights.safetensors")
    format: Literal["ternary2", "ternary_b3", "int8", "f32", "f16"] = Field(
        description="ternary2: 2-bit compute layout uint8 (n, ceil(k/128)*32); ternary_b3: base-3 compute "
                    "layout uint8 (n, ceil(k/320)*64), 1.6 bits/weight; int8: int8 (n, k)")
    shape: list[int] = Field(description="logical shape")
    scale: float | None = Field(default=None, description="ternary: the absmean scale g (float32 value)")
    scale_tensor: str | None = Field(default=None, description="int8: name of the float32 per-row scale tensor")


class SourceInfo(Strict):
    kind: Literal["hf", "gguf", "npz", "synthetic", "tflite", "onnx"] = Field(description="what it was converted from")
    path: str = Field(description="where it was read from")
    details: dict[str, str] = Field(default_factory=dict, description="e.g. the GGUF tensor types")


class OutputQuality(Strict):
    """How close one output of the planned model stays to the float model: cosine per sample (per
    position for decoders), mean and worst, on the calibration split and on the held-out split."""

    name: str = Field(description="the output measured (graph: a final softmax's input in place of its "
                                  "probabilities; mlp: logits; bert: embedding; bitnet: logits)")
    size: int = Field(ge=1, description="values per sample")
    calibration_cosine: float = Field(description="mean cosine on the calibration split (the plan was chosen on it)")
    calibration_worst: float = Field(description="lowest per-sample cosine on the calibration split")
    held_out_cosine: float = Field(description="mean cosine on the held-out split (not used to choose the plan)")
    held_out_worst: float = Field(description="lowest per-sample cosine on the held-out split")


class PlanQuality(Strict):
    """``--precision auto``: the budget holds for every output (the minimum over outputs of the
    mean cosine), chosen on the calibration split and checked on a held-out split."""

    budget: float = Field(gt=0, le=1, description="cosine to the float model every output must keep")
    calibration_samples: int = Field(ge=1, description="samples the plan was chosen on")
    held_out_samples: int = Field(ge=1, description="samples kept aside (deterministic split) to check the plan")
    calibration_min_cosine: float = Field(description="minimum over outputs of the mean cosine, calibration split")
    held_out_min_cosine: float = Field(description="minimum over outputs of the mean cosine, held-out split")
    below_budget: bool = Field(description="the held-out check missed the budget (the model was written anyway: "
                                           "convert --allow-below-budget)")
    outputs: list[OutputQuality] = Field(min_length=1, description="every output measured")


class ModelManifest(Strict):
    format: Literal["bitnet-edge-model"] = Field(default=FORMAT, description="file kind")
    format_version: Literal[1] = Field(default=FORMAT_VERSION, description="bumped on incompatible change")
    name: str = Field(pattern=MODEL_NAME, description="model name: a letter or digit, then up to 63 letters, digits, "
                                                     "'.', '_' or '-' (convert --name; the wire's MODEL_NAME)")
    config: ModelConfig = Field(description="architecture hyper-parameters")
    precision: dict[str, Precision] = Field(description="per linear layer (weight name): its precision")
    tensors: list[TensorEntry] = Field(description="every tensor in weights.safetensors")
    tokenizer: str | None = Field(default=None, pattern=FILE_NAME,
                                  description="tokenizer file in the model directory (one file name: letters, "
                                              "digits, '.', '_', '-'; no path)")
    chat_template: ChatTemplate | None = Field(default=None, description="decoders: how a conversation becomes a "
                                                                          "prompt (/v1/chat/completions)")
    source: SourceInfo = Field(description="provenance")
    calibration: dict[str, float] = Field(default_factory=dict,
                                          description="summary of the precision plan's quality: cosine (calibration split) "
                                                      "and held_out_cosine, each the minimum over outputs; "
                                                      "budget; samples and layers per precision")
    quality: PlanQuality | None = Field(default=None, description="--precision auto: per-output cosines on the "
                                                                  "calibration and held-out splits, and the budget")

    @property
    def architecture(self) -> str:
        return self.config.architecture

    def tensor(self, name: str) -> TensorEntry:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


def is_model_name(name: str) -> bool:
    """``name`` matches :data:`MODEL_NAME` in full (``re.match`` with ``$`` would let a final newline through)."""
    return isinstance(name, str) and re.fullmatch(MODEL_NAME[1:-1], name) is not None


def default_model_name(raw: str | None) -> str:
    """A valid model name (:data:`MODEL_NAME`) derived from a source's own name: a Hugging Face id
    such as ``microsoft/bitnet-b1.58-2B-4T`` keeps its last component, a GGUF ``general.name`` such as
    ``BitNet b1.58 2B4T`` becomes ``BitNet-b1.58-2B4T``; ``model`` when nothing usable is left."""
    text = (raw or "").strip().replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)
    text = re.sub(r"^[^A-Za-z0-9]+", "", text)[:64].rstrip("-.")
    return text if is_model_name(text) else "model"
