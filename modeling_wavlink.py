"""WavLink: compact audio-text embeddings with a global Whisper token (arXiv 2601.15118).

Served from the Hub as remote code: imports only torch, numpy, transformers and sibling modules.

Design decisions the paper leaves open:

* **Placement of the global token.** The learnable vector is appended *after* the conv front-end and the
  sinusoidal position embeddings, as the last element of the sequence, and it receives **no** position
  embedding. Self-attention is permutation-equivariant, so without a position embedding the token's output
  does not depend on where it sits or on how long the clip is; putting it last keeps Whisper's frame positions
  0..T-1 untouched, so pretrained frames see exactly what they saw in pretraining. With 30-s input the
  sequence is 1501 long (Whisper's 1500 positions plus the token), so no position table has to grow.
* **Variable-length audio.** Mel frames past a clip's end are zeroed before conv1 and the conv1 output is
  zeroed there before conv2, which reproduces the zero padding each conv sees when the clip runs alone (conv2
  has stride 2, so an odd clip's last frame would otherwise read one padded frame). Padded frames are then
  masked out of attention. A batched clip's embedding equals the clip run alone.
* **Long audio.** The processor splits audio longer than 30 s into 30-s windows; the model averages the
  windows' projected embeddings (before normalisation) into one embedding per clip.
"""

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import ModelOutput

try:
    from .configuration_wavlink import WavLinkConfig, check_matryoshka_dim
except ImportError:
    from configuration_wavlink import WavLinkConfig, check_matryoshka_dim

# Imported so that it travels with the model: `save_pretrained` copies the modules this file imports relatively
# (transformers' `custom_object_save`), so a saved folder or Hub repo carries `pipeline_wavlink.py`, and
# `pipeline(model=repo, trust_remote_code=True)` finds the class the config's `custom_pipelines` names. Nothing in
# this file calls it.
try:
    from .pipeline_wavlink import WavLinkEmbeddingPipeline  # noqa: F401
except ImportError:
    from pipeline_wavlink import WavLinkEmbeddingPipeline  # noqa: F401


# Inference runs at most this many 30-s windows through the audio tower at once (long audio: bounded memory).
WINDOWS_PER_PASS = 16

# ----------------------------------------------------------------------------------------------------------------
# Losses: functions of embeddings, so a trainer can call them on embeddings gathered across processes.
# ----------------------------------------------------------------------------------------------------------------


def clip_loss(
    audio_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    all_audio_embeds: torch.Tensor | None = None,
    all_text_embeds: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric InfoNCE over L2-normalised embeddings.

    `audio_embeds`/`text_embeds` are this process's `(n, d)` rows; `all_*` are the `(N, d)` embeddings of the
    whole (gathered) batch, in which this process's rows start at `offset`. Each local row is scored against all
    N columns, so with `all_*` gathered with autograd, averaging the per-process losses gives the same gradient as
    one process holding the global batch.
    """
    all_audio_embeds = audio_embeds if all_audio_embeds is None else all_audio_embeds
    all_text_embeds = text_embeds if all_text_embeds is None else all_text_embeds
    labels = torch.arange(audio_embeds.shape[0], device=audio_embeds.device) + offset
    logits_per_audio = logit_scale * audio_embeds @ all_text_embeds.t()
    logits_per_text = logit_scale * text_embeds @ all_audio_embeds.t()
    return (F.cross_entropy(logits_per_audio, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def siglip_loss(
    audio_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    all_text_embeds: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Pairwise sigmoid loss (SigLIP), summed over pairs and divided by the local batch size.

    The sigmoid loss is symmetric, so the local audio rows against all text columns cover every pair once across
    processes. `offset` is where this process's rows sit in the gathered batch.
    """
    all_text_embeds = text_embeds if all_text_embeds is None else all_text_embeds
    n = audio_embeds.shape[0]
    logits = logit_scale * audio_embeds @ all_text_embeds.t() + logit_bias
    signs = -torch.ones_like(logits)
    signs[torch.arange(n, device=logits.device), torch.arange(n, device=logits.device) + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / n


def truncate_embeddings(embeds: torch.Tensor, dim: int) -> torch.Tensor:
    """The first `dim` dimensions of `(..., d)` embeddings, re-normalised: a Matryoshka level."""
    return F.normalize(embeds[..., :dim], dim=-1)


def inference_autocast(device: torch.device, precision: str | None):
    """bfloat16 autocast on `device` for `precision="bf16"`, else nothing (fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prefix(embeds: torch.Tensor | None, dim: int) -> torch.Tensor | None:
    return None if embeds is None else truncate_embeddings(embeds, dim)


def matryoshka_contrastive_loss(
    audio_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    loss_type: str = "clip",
    matryoshka_dims: list[int] | tuple[int, ...] | None = None,
    all_audio_embeds: torch.Tensor | None = None,
    all_text_embeds: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """CLIP or SigLIP loss averaged over nested prefixes of the embeddings (Matryoshka).

    Args:
        audio_embeds, text_embeds: `(n, d)` local embeddings (normalised or not: each prefix is re-normalised).
        logit_scale: the (already exponentiated and clamped) temperature.
        logit_bias: the SigLIP bias; required when `loss_type="siglip"`.
        matryoshka_dims: prefix sizes; defaults to the full width only.
        all_audio_embeds, all_text_embeds: `(N, d)` embeddings gathered from every process (with autograd), or
            None for a single process.
        offset: index of this process's first row in the gathered batch.
    """
    dims = matryoshka_dims or [audio_embeds.shape[-1]]
    losses = []
    for dim in dims:
        audio, text = _prefix(audio_embeds, dim), _prefix(text_embeds, dim)
        if loss_type == "clip":
            losses.append(
                clip_loss(
                    audio,
                    text,
                    logit_scale,
                    all_audio_embeds=_prefix(all_audio_embeds, dim),
                    all_text_embeds=_prefix(all_text_embeds, dim),
                    offset=offset,
                )
            )
        elif loss_type == "siglip":
            if logit_bias is None:
                raise ValueError("siglip loss needs logit_bias")
            losses.append(
                siglip_loss(
                    audio, text, logit_scale, logit_bias, all_text_embeds=_prefix(all_text_embeds, dim), offset=offset
                )
            )
        else:
            raise ValueError(f"loss_type={loss_type!r} is not valid; allowed values: 'clip', 'siglip'.")
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------------------------------------------
# Outputs and small parameter modules
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class WavLinkOutput(ModelOutput):
    r"""
    loss (`torch.Tensor` of shape `()`, *optional*, returned when `return_loss=True`):
        Contrastive loss (CLIP or SigLIP) averaged over the Matryoshka dims.
    logits_per_audio (`torch.Tensor` of shape `(audio_batch_size, text_batch_size)`):
        Scaled cosine similarities (plus the SigLIP bias) between every audio and every text.
    logits_per_text (`torch.Tensor` of shape `(text_batch_size, audio_batch_size)`):
        The transpose of `logits_per_audio`.
    audio_embeds (`torch.Tensor` of shape `(audio_batch_size, projection_dim)`):
        L2-normalised audio embeddings.
    text_embeds (`torch.Tensor` of shape `(text_batch_size, projection_dim)`):
        L2-normalised text embeddings.
    logit_scale (`torch.Tensor` of shape `()`):
        The temperature actually used: `exp(clamp(log_scale, max=logit_scale_max))`.
    logit_bias (`torch.Tensor` of shape `()`, *optional*):
        The SigLIP bias (None for the CLIP loss).
    audio_model_output, text_model_output (`BaseModelOutputWithPooling`):
        The towers' outputs (hidden states before projection).
    """

    loss: torch.Tensor | None = None
    logits_per_audio: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    audio_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None
    logit_bias: torch.Tensor | None = None
    audio_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


class WavLinkGlobalToken(nn.Module):
    """The learnable global audio token `a_cls`. A module (not a bare parameter) so peft's `modules_to_save`
    can train and save it beside LoRA adapters."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.embedding.view(1, 1, -1).expand(batch_size, 1, -1)


class WavLinkLogitHead(nn.Module):
    """Learnable log temperature (and SigLIP bias), in a module so peft's `modules_to_save` can keep it."""

    def __init__(self, config: WavLinkConfig):
        super().__init__()
        self.logit_scale_max = config.logit_scale_max
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(config.logit_bias_init_value))) if config.loss_type == "siglip" else None
        )

    def forward(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Clamping in the forward pass (rather than editing the parameter in place after each step) keeps the
        # temperature bounded however the optimiser is driven.
        return self.logit_scale.clamp(max=self.logit_scale_max).exp(), self.logit_bias


# ----------------------------------------------------------------------------------------------------------------
# Towers and model
# ----------------------------------------------------------------------------------------------------------------


class WavLinkAudioEncoder(WhisperEncoder):
    """Whisper's encoder (same modules and weight names) with a forward pass for variable-length clips and pooling.

    `WhisperEncoder.forward` takes exactly 30 s, never masks and adds all 1500 positions; this forward runs the same
    pieces on any length up to 30 s: conv front-end masked at padded frames, the first T sinusoidal positions, the
    global token appended last (no position), the layers under a padding mask, the final layer norm, pooling.
    It adds no parameters: the global token is the model's `audio_global_token`, passed in, so the checkpoint names
    (and peft's `modules_to_save`) stay as they were.
    """

    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "encoder_layerdrop", 0.0):
            raise ValueError(
                f"audio_config.encoder_layerdrop={config.encoder_layerdrop} is not supported: dropping layers would "
                "drop the global token's path through them. Set it to 0."
            )

    def forward(
        self,
        input_features: torch.Tensor,
        input_features_mask: torch.Tensor | None = None,
        global_token: nn.Module | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """
        Args:
            input_features: `(batch, num_mel_bins, frames)` log-mel features, `frames <= 3000`.
            input_features_mask: `(batch, frames)`, 1 for real frames, 0 for padding. None means every frame is real
                (for example the paper's 30-s padded input).
            global_token: a `WavLinkGlobalToken`; appended as the last element and pooled at. None pools the masked
                mean of the frames instead.

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` `(batch, ceil(frames/2) [+1 for the token], d_model)`
            and `pooler_output` `(batch, d_model)`, the pooled audio representation before projection.
        """
        self._check_shape(input_features)
        hidden, frame_mask = self.embed_frames(input_features, input_features_mask)
        if global_token is not None:
            hidden = torch.cat([hidden, global_token(hidden.shape[0]).to(hidden.dtype)], dim=1)
            if frame_mask is not None:
                frame_mask = F.pad(frame_mask, (0, 1), value=True)
        hidden = F.dropout(hidden, p=self.dropout, training=self.training)
        attention_mask = None
        if frame_mask is not None:
            # Additive (batch, 1, 1, keys) mask: works for eager and SDPA attention alike.
            attention_mask = torch.zeros(frame_mask.shape, dtype=hidden.dtype, device=hidden.device)
            attention_mask = attention_mask.masked_fill(~frame_mask, torch.finfo(hidden.dtype).min)[:, None, None, :]
        for layer in self.layers:
            hidden = layer(hidden, attention_mask)
        hidden = self.layer_norm(hidden)
        if global_token is not None:
            pooled = hidden[:, -1]
        elif frame_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            weights = frame_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)

    def _check_shape(self, input_features: torch.Tensor) -> None:
        max_frames = self.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0]
        if input_features.ndim != 3 or input_features.shape[1] != self.num_mel_bins:
            raise ValueError(
                f"input_features must have shape (batch, {self.num_mel_bins}, frames), got "
                f"{tuple(input_features.shape)}."
            )
        finite = torch.isfinite(input_features).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise ValueError(
                f"input_features of window(s) {bad[:5]} contain NaN or Inf; check the audio they came from."
            )
        if input_features.shape[-1] > max_frames:
            raise ValueError(
                f"input_features has {input_features.shape[-1]} frames; at most {max_frames} (30 s) fit the encoder. "
                "Let the processor split long audio into windows."
            )

    def embed_frames(self, input_features, input_features_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """conv1, conv2 and positions. Mel frames past a clip's end are zeroed before conv1 and conv1's output before
        conv2, which is the zero padding each conv sees when the clip runs alone (conv2 has stride 2: an odd clip's
        last frame would otherwise read a padded frame). Returns `(hidden, frame_mask)`, the mask None if all real."""
        dtype = self.conv1.weight.dtype
        features = input_features.to(dtype)
        frame_mask = None
        if input_features_mask is not None and not bool(input_features_mask.all()):
            mel_mask = input_features_mask.to(dtype).unsqueeze(1)
            hidden = F.gelu(self.conv1(features * mel_mask)) * mel_mask
            frame_mask = input_features_mask[:, ::2].bool()  # conv2 frame t is real iff mel frame 2t is real
        else:
            hidden = F.gelu(self.conv1(features))
        hidden = F.gelu(self.conv2(hidden)).transpose(1, 2)
        return hidden + self.embed_positions.weight[: hidden.shape[1]].to(hidden.dtype), frame_mask


def pool_text(outputs, attention_mask: torch.Tensor, pooling: str, text_model_type: str) -> torch.Tensor:
    """`(batch, hidden_size)` text representation from a text tower's outputs (right-padded input).

    `cls`: the first token. `mean`: the mean over real tokens. `eos`: CLIP's own pooled output (CLIP finds its EOS
    token itself), for other towers the last real token."""
    hidden = outputs.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if pooling != "eos":
        raise ValueError(f"text pooling {pooling!r} is not one of 'eos', 'cls', 'mean'.")
    if text_model_type == "clip_text_model" and getattr(outputs, "pooler_output", None) is not None:
        return outputs.pooler_output
    last = attention_mask.long().sum(1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class WavLinkPreTrainedModel(PreTrainedModel):
    config: WavLinkConfig
    config_class = WavLinkConfig
    base_model_prefix = "wavlink"
    main_input_name = "input_features"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    # The padded-audio mask is an additive (batch, 1, 1, keys) float mask: eager and SDPA take it. Flash-attention
    # kernels take a different mask (varlen or none), so they are not declared, and transformers refuses them.
    _supports_sdpa = True
    _no_split_modules = ["WhisperEncoderLayer"]

    def _init_weights(self, module):
        # The towers are PreTrainedModels and are dispatched to their own `_init_weights` by transformers.
        std = self.config.initializer_range
        if isinstance(module, WavLinkGlobalToken):
            init.normal_(module.embedding, mean=0.0, std=std)
        elif isinstance(module, WavLinkLogitHead):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, self.config.logit_bias_init_value)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            if module.bias is not None:
                init.zeros_(module.bias)


class WavLinkModel(WavLinkPreTrainedModel):
    r"""
    WavLink dual encoder. `audio_model` is a stock `WhisperEncoder` (weight names as in Whisper); `text_model` is
    the text tower built by `AutoModel` from `config.text_config`.

    Example:
    ```python
    >>> model = AutoModel.from_pretrained("path/or/repo", trust_remote_code=True)
    >>> processor = AutoProcessor.from_pretrained("path/or/repo", trust_remote_code=True)
    >>> batch = processor(audio=["dog.mp3"], text=["a dog barks", "rain"], return_tensors="pt")
    >>> model(**batch).logits_per_audio.softmax(-1)
    ```
    """

    def __init__(self, config: WavLinkConfig):
        super().__init__(config)
        self.audio_model = WavLinkAudioEncoder(config.audio_config)
        self.text_model = AutoModel.from_config(config.text_config)
        _drop_unused_pooler(self.text_model)
        audio_width = config.audio_config.d_model
        text_width = config.text_config.hidden_size
        self.audio_global_token = WavLinkGlobalToken(audio_width) if config.audio_pooling == "global_token" else None
        # No bias, as in CLIP: lets a CLIP checkpoint's `text_projection` be reused as is.
        self.audio_projection = nn.Linear(audio_width, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text_width, config.projection_dim, bias=False)
        self.logit_head = WavLinkLogitHead(config)
        self._text_forward_args = set(inspect.signature(self.text_model.forward).parameters)
        self.post_init()

    # ------------------------------------------------------------------ audio

    def encode_audio(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None
    ) -> BaseModelOutputWithPooling:
        """The audio tower with this model's pooling (see `WavLinkAudioEncoder.forward`): pooled at the global token,
        or the masked mean of the frames when `audio_pooling="mean"`."""
        return self.audio_model(input_features, input_features_mask, global_token=self.audio_global_token)

    def get_audio_features(
        self,
        input_features: torch.Tensor,
        input_features_mask: torch.Tensor | None = None,
        audio_window_counts: torch.Tensor | None = None,
        dim: int | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Audio embeddings.

        Args:
            input_features: `(windows, num_mel_bins, frames)` from the processor.
            input_features_mask: `(windows, frames)` audio mask (1 = real frame).
            audio_window_counts: `(batch,)` number of consecutive 30-s windows that make each clip (clips longer
                than 30 s); None means one window per clip.
            dim: a Matryoshka size from `config.matryoshka_dims`; the embedding is truncated to it and re-normalised.

        Returns:
            `BaseModelOutputWithPooling` whose `pooler_output` is the `(batch, dim)` L2-normalised embedding, and whose
            `last_hidden_state` is the encoder's per-window output. Without gradients, more than `WINDOWS_PER_PASS`
            windows (long audio) run in passes of that many, so memory stays bounded however long the audio is;
            `last_hidden_state` is then None (keeping every window's states is what would not fit).
        """
        dim = self._check_dim(dim)
        num_windows = input_features.shape[0]
        chunked = num_windows > WINDOWS_PER_PASS and not torch.is_grad_enabled()
        starts = range(0, num_windows, WINDOWS_PER_PASS) if chunked else [0]
        projected = []
        with self._inference_autocast(input_features.device):
            for start in starts:
                stop = start + WINDOWS_PER_PASS if chunked else num_windows
                mask = None if input_features_mask is None else input_features_mask[start:stop]
                audio_outputs = self.encode_audio(input_features[start:stop], mask)
                projected.append(self.audio_projection(audio_outputs.pooler_output).float())
        projected = torch.cat(projected) if chunked else projected[0]
        if chunked:
            audio_outputs.last_hidden_state = None
        if audio_window_counts is not None:
            projected = _average_windows(projected, audio_window_counts)
        audio_outputs.pooler_output = truncate_embeddings(projected, dim)
        return audio_outputs

    # ------------------------------------------------------------------ text

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        """Run the text tower and pool (`config.text_pooling`). `pooler_output` is `(batch, hidden_size)`."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self._text_forward_args:
            inputs["token_type_ids"] = token_type_ids
        outputs = self.text_model(**inputs, return_dict=True)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        pooled = pool_text(outputs, attention_mask, self.config.text_pooling, self.config.text_config.model_type)
        hidden = outputs.last_hidden_state
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        dim: int | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Text embeddings: `pooler_output` is the `(batch, dim)` L2-normalised embedding (see `get_audio_features`)."""
        dim = self._check_dim(dim)
        with self._inference_autocast(input_ids.device):
            text_outputs = self.encode_text(input_ids, attention_mask, token_type_ids)
            projected = self.text_projection(text_outputs.pooler_output).float()
        text_outputs.pooler_output = truncate_embeddings(projected, dim)
        return text_outputs

    # ------------------------------------------------------------------ both

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        audio_window_counts: torch.Tensor | None = None,
        return_loss: bool | None = None,
        dim: int | None = None,
        **kwargs,
    ) -> WavLinkOutput:
        r"""
        Args:
            input_ids, attention_mask, token_type_ids: `(text_batch, seq_len)` from the tokenizer.
            input_features, input_features_mask, audio_window_counts: from the processor (see `get_audio_features`).
            return_loss: compute the contrastive loss (audio `i` pairs with text `i`).
            dim: score at this Matryoshka size instead of the full width.
        """
        audio_outputs = self.get_audio_features(input_features, input_features_mask, audio_window_counts, dim=dim)
        text_outputs = self.get_text_features(input_ids, attention_mask, token_type_ids, dim=dim)
        audio_embeds, text_embeds = audio_outputs.pooler_output, text_outputs.pooler_output
        logit_scale, logit_bias = self.logit_head()
        logits_per_audio = logit_scale * audio_embeds @ text_embeds.t()
        if logit_bias is not None:
            logits_per_audio = logits_per_audio + logit_bias
        loss = None
        if return_loss:
            if audio_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"return_loss=True pairs audio i with text i, but got {audio_embeds.shape[0]} clips and "
                    f"{text_embeds.shape[0]} texts."
                )
            dims = self.config.matryoshka_dims if dim is None else [d for d in self.config.matryoshka_dims if d <= dim]
            loss = matryoshka_contrastive_loss(
                audio_embeds,
                text_embeds,
                logit_scale=logit_scale,
                logit_bias=logit_bias,
                loss_type=self.config.loss_type,
                matryoshka_dims=dims,
            )
        return WavLinkOutput(
            loss=loss,
            logits_per_audio=logits_per_audio,
            logits_per_text=logits_per_audio.t(),
            audio_embeds=audio_embeds,
            text_embeds=text_embeds,
            logit_scale=logit_scale,
            logit_bias=logit_bias,
            audio_model_output=audio_outputs,
            text_model_output=text_outputs,
        )

    def _inference_autocast(self, device: torch.device):
        # bf16 is an inference option only: training precision is the trainer's business (Accelerate).
        if self.training or torch.is_autocast_enabled(device.type):
            return contextlib.nullcontext()
        return inference_autocast(device, self.config.inference_precision)

    def _check_dim(self, dim: int | None) -> int:
        return check_matryoshka_dim(dim, self.config)

    # ------------------------------------------------------------------ construction from pretrained towers

    @classmethod
    def from_towers(
        cls,
        audio_tower: str,
        text_tower: str,
        projection_dim: int | None = None,
        dtype: torch.dtype = torch.float32,
        **config_kwargs,
    ) -> "WavLinkModel":
        """Build a new WavLink model from a pretrained Whisper checkpoint and a pretrained text encoder.

        Args:
            audio_tower: Hub id or local path of any Whisper checkpoint (seq2seq, `WhisperModel` or encoder-only;
                float16 or float32 on disk). Only the encoder is kept.
            text_tower: Hub id or local path of a CLIP checkpoint (its text tower and `text_projection` are used),
                a BERT-family model or ModernBERT.
            projection_dim: shared embedding width. Defaults to CLIP's projection width for CLIP towers, else 512.
            dtype: dtype of the returned model (float32 unless asked otherwise, whatever the checkpoint stores).
            config_kwargs: any other `WavLinkConfig` field (`loss_type`, `audio_pooling`, `text_pooling`, ...).
        """
        audio_model = _load_whisper_encoder(audio_tower, dtype)
        text_model, clip_projection = _load_text_tower(text_tower, dtype)
        if projection_dim is None:
            projection_dim = clip_projection.out_features if clip_projection is not None else 512
        config_kwargs.setdefault("base_models", [str(audio_tower), str(text_tower)])
        config = WavLinkConfig(
            audio_config=audio_model.config.to_dict(),
            text_config=text_model.config.to_dict(),
            projection_dim=projection_dim,
            **config_kwargs,
        )
        model = cls(config)
        model.audio_model.load_state_dict(audio_model.state_dict())
        _drop_unused_pooler(text_model)
        model.text_model.load_state_dict(text_model.state_dict())
        if clip_projection is not None:
            if clip_projection.weight.shape == model.text_projection.weight.shape:
                model.text_projection.load_state_dict(clip_projection.state_dict())
            else:
                raise ValueError(
                    f"projection_dim={projection_dim} differs from the CLIP text_projection width "
                    f"{clip_projection.out_features} of {text_tower!r}; use "
                    f"projection_dim={clip_projection.out_features} "
                    "to reuse CLIP's pretrained projector."
                )
        return model.to(dtype)


def _average_windows(projected: torch.Tensor, window_counts: torch.Tensor) -> torch.Tensor:
    """Mean of consecutive rows: `(sum(counts), d)` -> `(len(counts), d)`."""
    counts = window_counts.to(projected.device).long()
    if int(counts.sum()) != projected.shape[0] or bool((counts < 1).any()):
        raise ValueError(
            f"audio_window_counts {counts.tolist()} does not match the {projected.shape[0]} audio windows given."
        )
    clip_index = torch.repeat_interleave(torch.arange(len(counts), device=projected.device), counts)
    sums = torch.zeros(len(counts), projected.shape[1], dtype=projected.dtype, device=projected.device)
    sums = sums.index_add(0, clip_index, projected)
    return sums / counts.unsqueeze(1).to(projected.dtype)


def _drop_unused_pooler(text_model: nn.Module) -> None:
    # BERT-style towers carry a dense+tanh pooler that WavLink never uses; dropping it keeps DDP free of
    # unused parameters and the checkpoint free of dead weights.
    if getattr(text_model, "pooler", None) is not None:
        text_model.pooler = None


def _load_whisper_encoder(name_or_path: str, dtype: torch.dtype) -> WhisperEncoder:
    from transformers import AutoConfig, WhisperModel

    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type != "whisper":
        raise ValueError(f"audio_tower {name_or_path!r} is a {config.model_type!r} checkpoint, not Whisper.")
    if any(arch == "WhisperEncoder" for arch in (config.architectures or [])):
        encoder, info = WhisperEncoder.from_pretrained(name_or_path, dtype=dtype, output_loading_info=True)
        missing = info["missing_keys"]
    else:
        whisper, info = WhisperModel.from_pretrained(name_or_path, dtype=dtype, output_loading_info=True)
        encoder = whisper.get_encoder()
        missing = [k for k in info["missing_keys"] if k.startswith("encoder.")]
    missing = [k for k in missing if "embed_positions" not in k]  # sinusoidal, rebuilt at init
    if missing:
        raise ValueError(f"audio_tower {name_or_path!r} lacks Whisper encoder weights: {sorted(missing)[:5]} ...")
    return encoder


def _load_text_tower(name_or_path: str, dtype: torch.dtype) -> tuple[PreTrainedModel, nn.Linear | None]:
    """Returns the text tower and, for CLIP checkpoints, CLIP's pretrained `text_projection`."""
    from transformers import AutoConfig, CLIPTextModelWithProjection

    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type in ("clip", "clip_text_model"):
        text_config = config
        if config.model_type == "clip":  # a full CLIP checkpoint: its projection width lives on the outer config
            text_config = config.text_config
            text_config.projection_dim = config.projection_dim
        with_projection = CLIPTextModelWithProjection.from_pretrained(name_or_path, config=text_config, dtype=dtype)
        return with_projection.text_model, with_projection.text_projection
    return AutoModel.from_pretrained(name_or_path, dtype=dtype), None


WavLinkModel.register_for_auto_class("AutoModel")

__all__ = [
    "WavLinkModel",
    "WavLinkPreTrainedModel",
    "WavLinkOutput",
    "clip_loss",
    "siglip_loss",
    "matryoshka_contrastive_loss",
    "truncate_embeddings",
    "inference_autocast",
    "WavLinkAudioEncoder",
    "pool_text",
]
