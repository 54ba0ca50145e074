"""WavLink configuration.

Served from the Hub as remote code: imports only torch, numpy, transformers and sibling modules.
"""

import math

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

LOSS_TYPES = ("clip", "siglip")
AUDIO_POOLINGS = ("global_token", "mean")
TEXT_POOLINGS = ("eos", "cls", "mean")
EMBEDDING_TASK = "wavlink-embedding"

# Default text pooling per text-tower family (paper: CLIP at EOS, ModernBERT at CLS; sentence-style BERTs
# such as MiniLM were trained with mean pooling).
_DEFAULT_TEXT_POOLING = {"clip_text_model": "eos", "modernbert": "cls"}


def check_matryoshka_dim(dim: int | None, config) -> int:
    """`dim` if it is one of `config.matryoshka_dims`, the full width when None; otherwise a ValueError naming the
    allowed sizes. The one check behind `dim=` in the model, the pipeline and the tools."""
    if dim is None:
        return config.projection_dim
    if dim not in config.matryoshka_dims:
        raise ValueError(f"dim={dim} is not a Matryoshka size of this model; choose one of {config.matryoshka_dims}.")
    return dim


def check_positive_size(name: str, value) -> int:
    """`value` if it is a positive whole number (a batch size, a count); otherwise a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}.")
    return value


def check_worker_count(name: str, value) -> int:
    """`value` if it is a whole number of worker processes, 0 or more; otherwise a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number of workers, 0 or more, got {value!r}.")
    return value


def _check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(
            f"WavLinkConfig.{field}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}."
        )


class WavLinkConfig(PretrainedConfig):
    r"""
    Configuration of a [`WavLinkModel`]: a Whisper audio encoder with one learnable global token, a text encoder,
    and linear projectors into a shared, L2-normalised embedding space trained with a CLIP or SigLIP loss and
    Matryoshka supervision.

    Args:
        audio_config (`dict` or `WhisperConfig`, *optional*):
            Config of the Whisper audio tower (only the encoder is used).
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the text tower. Its `model_type` picks the class: `clip_text_model` (default), any
            BERT-family model (`bert`, `roberta`, ...) or `modernbert`.
        projection_dim (`int`, *optional*, defaults to 512):
            Width `d` of the shared embedding space.
        matryoshka_dims (`list[int]`, *optional*):
            Nested prefix sizes supervised by the loss and offered at inference. Defaults to `[d, d/2, d/4, d/8]`.
            Must be strictly decreasing, start with `projection_dim` and be positive.
        loss_type (`str`, *optional*, defaults to `"clip"`):
            `"clip"` (symmetric InfoNCE) or `"siglip"` (pairwise sigmoid).
        logit_scale_init_value (`float`, *optional*):
            Initial log temperature. Defaults to `ln(1/0.07)` for CLIP and `ln(10)` for SigLIP.
        logit_scale_max (`float`, *optional*, defaults to `ln(100)`):
            The log temperature is clamped at this value in the forward pass.
        logit_bias_init_value (`float`, *optional*, defaults to -10.0):
            Initial SigLIP bias (unused by the CLIP loss).
        audio_pooling (`str`, *optional*, defaults to `"global_token"`):
            `"global_token"` (the paper's appended learnable token) or `"mean"` (masked mean of the frames; the
            paper's ablation).
        text_pooling (`str`, *optional*):
            `"eos"`, `"cls"` or `"mean"`. Defaults to `"eos"` for CLIP text, `"cls"` for ModernBERT and `"mean"`
            for other encoders.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation used to initialise the global token and fresh projectors.
        inference_precision (`str`, *optional*, defaults to `"fp32"`):
            `"bf16"` runs the towers under bfloat16 autocast when the model is not training (fast on CPUs with
            AVX512-BF16/AMX and on GPUs; measured 1.6-2.1x faster on an AVX512-BF16 CPU, cosine >= 0.9999 to fp32).
            Embeddings are returned in float32 either way.
        base_models (`list[str]`, *optional*):
            Where the weights started: the pretrained towers (set by `WavLinkModel.from_towers`), or the checkpoint
            a run fine-tuned (set by `train.py --model_name_or_path`). Model cards list them as `base_model`.
    """

    model_type = "wavlink"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_text_model"),
    }

    audio_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    projection_dim: int = 512
    matryoshka_dims: list[int] | None = None
    loss_type: str = "clip"
    logit_scale_init_value: float | None = None
    logit_scale_max: float = math.log(100.0)
    logit_bias_init_value: float = -10.0
    audio_pooling: str = "global_token"
    text_pooling: str | None = None
    initializer_range: float = 0.02
    inference_precision: str = "fp32"
    base_models: list[str] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._fill_defaults()
        self._check()
        self._register_pipeline()

    def _fill_defaults(self) -> None:
        """Defaults that depend on other fields."""
        if self.text_pooling is None:
            self.text_pooling = _DEFAULT_TEXT_POOLING.get(self.text_config.model_type, "mean")
        if self.matryoshka_dims is None and self.projection_dim > 0:
            self.matryoshka_dims = [self.projection_dim // f for f in (1, 2, 4, 8) if self.projection_dim // f > 0]
        if self.matryoshka_dims is not None:
            self.matryoshka_dims = [int(d) for d in self.matryoshka_dims]
        if self.logit_scale_init_value is None:
            self.logit_scale_init_value = math.log(1 / 0.07) if self.loss_type == "clip" else math.log(10.0)

    def _check(self) -> None:
        """Every field's value, each error naming the field and what it may be."""
        if self.audio_config.model_type != "whisper":
            raise ValueError(
                f"WavLinkConfig.audio_config must be a Whisper config, got model_type={self.audio_config.model_type!r}."
            )
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_choice("audio_pooling", self.audio_pooling, AUDIO_POOLINGS)
        _check_choice("inference_precision", self.inference_precision, ("fp32", "bf16"))
        _check_choice("text_pooling", self.text_pooling, TEXT_POOLINGS)
        if self.projection_dim <= 0:
            raise ValueError(f"WavLinkConfig.projection_dim must be positive, got {self.projection_dim}.")
        dims = self.matryoshka_dims
        if not dims or dims[0] != self.projection_dim or any(a <= b for a, b in zip(dims, dims[1:])) or dims[-1] <= 0:
            raise ValueError(
                f"WavLinkConfig.matryoshka_dims={dims!r} is not valid; it must start with projection_dim="
                f"{self.projection_dim} and be strictly decreasing positive sizes, e.g. "
                f"{[self.projection_dim // f for f in (1, 2, 4, 8)]}."
            )
        if self.logit_scale_init_value > self.logit_scale_max:
            raise ValueError(
                f"WavLinkConfig.logit_scale_init_value={self.logit_scale_init_value} exceeds logit_scale_max="
                f"{self.logit_scale_max}."
            )

    def _register_pipeline(self) -> None:
        """Hub plumbing: lets `pipeline(model=repo, trust_remote_code=True)` find the embedding pipeline, which is
        saved and served beside the model code."""
        if not getattr(self, "custom_pipelines", None):
            self.custom_pipelines = {
                EMBEDDING_TASK: {
                    "impl": "pipeline_wavlink.WavLinkEmbeddingPipeline",
                    "pt": ["AutoModel"],
                    "tf": [],
                    "type": "multimodal",
                }
            }


__all__ = ["EMBEDDING_TASK", "WavLinkConfig", "check_matryoshka_dim", "check_positive_size"]

WavLinkConfig.register_for_auto_class()
