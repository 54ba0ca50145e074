"""Evaluation's embeddings: every clip and caption embedded once at full width, with the loop the pipeline and the
index use (`pipeline_wavlink.iter_audio_embeddings`: length-sorted batches, decoding in DataLoader workers, log-mel
on the model's device). With an `Accelerator`, batches are dealt to processes and the rows gathered once at the end.
"""

import numpy as np
import torch

from modeling_wavlink import truncate_embeddings
from pipeline_wavlink import gather_embeddings, iter_audio_embeddings, iter_text_embeddings


def _shard(accelerator) -> tuple[int, int]:
    return (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)


def embed_clips(
    model,
    processor,
    clips,
    batch_size=16,
    accelerator=None,
    progress=True,
    inference_precision=None,
    durations=None,
    num_workers=None,
):
    """`(len(clips), d)` L2-normalised audio embeddings at full width; clips are anything the processor accepts.
    Raises `ValueError` naming the clip (index and path) that cannot be decoded."""
    is_main = accelerator is None or accelerator.is_main_process
    batches = iter_audio_embeddings(
        model,
        processor,
        clips,
        batch_size=batch_size,
        lengths=durations,
        num_workers=num_workers,
        inference_precision=inference_precision,
        label="clip {}",
        shard=_shard(accelerator),
        progress=progress and is_main,
    )
    return gather_embeddings(accelerator, list(batches), len(clips), model.config.projection_dim)


def embed_texts(model, processor, texts, batch_size=64, accelerator=None, progress=True, inference_precision=None):
    """`(len(texts), d)` L2-normalised text embeddings at full width.

    Each distinct token sequence is embedded once and its row reused: texts the tokenizer cannot tell apart (the
    same caption, or one differing only in case for an uncased tokenizer) then tie exactly; embedded in different
    padded batches they would differ by float noise, which the pessimistic tie rule turns into ranks. Sets whose
    captions repeat also embed faster."""
    texts = list(texts)
    keys = [tuple(ids) for ids in processor.tokenizer(texts, truncation=True)["input_ids"]]
    row_of = {}  # token sequence -> row of the embedded texts
    for key in keys:
        row_of.setdefault(key, len(row_of))
    first_text = dict(zip(reversed(keys), reversed(texts)))  # each sequence's first text
    unique = [first_text[key] for key in row_of]
    is_main = accelerator is None or accelerator.is_main_process
    batches = iter_text_embeddings(
        model,
        processor,
        unique,
        batch_size=batch_size,
        inference_precision=inference_precision,
        shard=_shard(accelerator),
        progress=progress and is_main,
    )
    embeds = gather_embeddings(accelerator, list(batches), len(unique), model.config.projection_dim)
    return embeds[[row_of[key] for key in keys]]


def at_dim(embeds: np.ndarray, dim: int) -> np.ndarray:
    """Truncate to a Matryoshka prefix and re-normalise."""
    return truncate_embeddings(torch.from_numpy(embeds), dim).numpy()
