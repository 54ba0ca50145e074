"""Where a new global token starts (`train.py --global_token_init`).

`normal` is the paper's (and WavLink 0.1's): a small random vector, N(0, initializer_range), far below the scale of
Whisper's frame states. `frame_mean` starts the token at the mean of the pretrained audio tower's own input frames
(conv front-end + positions) over the first training clips: a vector of the size and kind the encoder's layers
expect, with no clip's content in it.
"""

import logging

import numpy as np
import torch

from processing_wavlink import SAMPLE_RATE
from wavlink.training.data import BadSampleError, decode_sample

logger = logging.getLogger(__name__)

GLOBAL_TOKEN_INITS = ("normal", "frame_mean")


def first_waveforms(table, count: int, max_samples: int | None) -> list[np.ndarray]:
    """The first `count` decodable training clips (undecodable rows skipped), cropped from their start."""
    waveforms = []
    for index, row in enumerate(table):
        try:
            sample = decode_sample(row, index, np.random.default_rng(0), None)
        except BadSampleError:
            continue
        waveforms.append(sample["waveform"][:max_samples])
        if len(waveforms) == count:
            break
    if not waveforms:
        raise ValueError("--global_token_init frame_mean: no decodable clip among the training rows.")
    return waveforms


@torch.no_grad()
def frame_mean(audio_model, input_features: torch.Tensor, input_features_mask: torch.Tensor | None) -> torch.Tensor:
    """`(d_model,)`: the mean over every real frame of every clip of the audio tower's input states."""
    hidden, frame_mask = audio_model.embed_frames(input_features, input_features_mask)
    if frame_mask is None:
        return hidden.float().mean(dim=(0, 1))
    weights = frame_mask.unsqueeze(-1).float()
    return (hidden.float() * weights).sum(dim=(0, 1)) / weights.sum()


def init_global_token(model, processor, table, how: str, num_clips: int = 64, max_seconds: float = 30.0) -> None:
    """Set `model.audio_global_token` as `how` says (`normal` leaves the model's own initialisation)."""
    if how not in GLOBAL_TOKEN_INITS:
        raise ValueError(f"--global_token_init: {how!r} is not one of {GLOBAL_TOKEN_INITS}.")
    if how == "normal":
        return
    if model.audio_global_token is None:
        raise ValueError("--global_token_init frame_mean needs --audio_pooling global_token.")
    rows = table.take(2 * num_clips)  # room for a few undecodable rows; a stream is read from its start
    waveforms = first_waveforms(rows, num_clips, int(max_seconds * SAMPLE_RATE))
    padded = processor.pad_waveforms(waveforms)
    features = processor.log_mel(padded["padded_waveforms"], padded["waveform_lengths"])
    token = frame_mean(model.audio_model, features["input_features"], features.get("input_features_mask"))
    model.audio_global_token.embedding.data.copy_(token.to(model.audio_global_token.embedding.dtype))
    logger.info("global token set to the mean input frame of %d training clips (norm %.2f)", len(waveforms),
                float(token.norm()))  # fmt: skip
