"""The recipe of a ``train-lm`` run and the report it writes (``lm-training.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bitnet_edge.sdk.schemas import Strict
from bitnet_edge.sdk.train.lm import LmConfig
from bitnet_edge.sdk.train.trainer import TrainConfig

__all__ = ["LmRecipe", "QUICK_RECIPE", "CorpusReport", "ModelReport", "GreedyCheck", "ParityReport", "Sample",
           "LmTrainingReport", "REPORT_FILE"]

REPORT_FILE = "lm-training.json"


class LmRecipe(Strict):
    """Everything that decides the trained models (the same recipe gives the same models)."""

    model: LmConfig = Field(default_factory=LmConfig, description="decoder shape")
    train: TrainConfig = Field(default_factory=TrainConfig, description="ternary (QAT) run; the float run "
                                                                          "differs only in its learning rate")
    float_lr: float = Field(default=5e-3, gt=0, le=1, description="peak learning rate of the float baseline")
    heldout_fraction: float = Field(default=0.1, gt=0, lt=1, description="share of stdlib modules held out")
    max_train_bytes: int = Field(default=2_000_000, ge=1, description="source bytes read for training")
    max_heldout_bytes: int = Field(default=400_000, ge=1, description="source bytes read for evaluation")
    eval_windows: int = Field(default=48, ge=1, le=100_000, description="held-out windows of seq_len tokens")


#: runs in seconds (smoke tests, ``demo --quick``); the model learns little
QUICK_RECIPE = LmRecipe.model_validate({
    "model": {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
              "num_kv_heads": 2, "max_position": 256},
    "train": {"steps": 60, "batch_size": 8, "seq_len": 64, "lr": 1e-2, "warmup_steps": 6},
    "float_lr": 1e-2, "max_train_bytes": 300_000, "max_heldout_bytes": 60_000, "eval_windows": 8})


class CorpusReport(Strict):
    root: str = Field(description="the standard library directory read")
    python: str = Field(description="interpreter version whose stdlib it is")
    train_modules: int
    heldout_modules: list[str] = Field(description="the held-out modules, by name")
    train_bytes: int
    heldout_bytes: int
    train_tokens: int = Field(description="tokens of the training code stream")
    train_chats: int = Field(description="docstring exchanges in the training chat stream")
    heldout_tokens: int
    bytes_per_token: float = Field(description="training text bytes per BPE token")


class ModelReport(Strict):
    name: str = Field(description="row label")
    trained: Literal["ternary-qat", "float"] = Field(description="how the weights were trained")
    deployed: str = Field(description="precision of the converted model")
    train_seconds: float | None = Field(default=None, description="wall time of its training run")
    train_cpu_seconds: float | None = Field(default=None, description="CPU time of its training run (all threads)")
    train_tokens: int | None = None
    final_train_loss: float | None = Field(default=None, description="mean loss of the last 10 steps")
    heldout_ppl_trainer: float | None = Field(default=None, description="held-out code perplexity, trainer's forward")
    heldout_ppl: float = Field(description="held-out code perplexity of the converted model, our runtime")
    heldout_chat_ppl: float = Field(description="held-out docstring-chat perplexity, our runtime")
    model_dir: str = Field(description="the converted model directory")
    weights_bytes: int = Field(description="bytes of its weights.safetensors")
    model_dir_bytes: int = Field(description="bytes of every file in the model directory")
    weights_zstd_bytes: int = Field(description="weights.safetensors compressed with zstd (level 19)")


class GreedyCheck(Strict):
    prompt: str
    trainer_ids: list[int] = Field(description="greedy tokens of the trainer's own (deployed-numerics) forward")
    runtime_ids: list[int] = Field(description="greedy tokens of the converted model in our runtime")
    match: bool


class ParityReport(Strict):
    max_abs_logit_diff: float = Field(description="trainer vs runtime logits over a held-out window")
    mean_abs_logit_diff: float = Field(description="the same, averaged over every logit")
    logit_scale: float = Field(description="max |logit| of that window, for scale")
    greedy: list[GreedyCheck]

    @property
    def ok(self) -> bool:
        return all(g.match for g in self.greedy)


class Sample(Strict):
    """A completion of the converted ternary model in our runtime (seeded sampling)."""

    kind: Literal["completion", "chat"]
    prompt: str
    text: str
    temperature: float
    top_k: int | None
    seed: int


class LmTrainingReport(Strict):
    format: Literal["bitnet-edge-lm-training"] = "bitnet-edge-lm-training"
    format_version: Literal[1] = 1
    recipe: LmRecipe
    corpus: CorpusReport
    hf_dirs: dict[str, str] = Field(description="exported Hugging Face checkpoints: ternary, float")
    models: list[ModelReport] = Field(description="ternary QAT, float32, float16 and post-training ternary")
    parity: ParityReport
    samples: list[Sample]
    jobs: int = Field(description="training processes run side by side")
    seconds: float = Field(description="wall time of the whole run")
    numpy: str
