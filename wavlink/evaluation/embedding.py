"""The length-sorted embedding loop: every clip and caption embedded once, in batches ordered by length (little
padding), under `inference_mode`. With an `Accelerator`, batches are split across processes and gathered; each item
carries its index, so the items accelerate repeats to even out processes, and the padding that makes batch sizes
equal, are dropped exactly. (`gather_for_metrics` is not used: its remainder logic assumes equal batch sizes, which
length-sorted batches are not.)
"""

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from configuration_wavlink import check_positive_size
from modeling_wavlink import inference_autocast, truncate_embeddings
from processing_wavlink import SAMPLE_RATE, describe_audio, load_audio

from ..training.data import clip_duration


def length_sorted_batches(lengths, batch_size: int) -> list[list[int]]:
    check_positive_size("batch_size", batch_size)
    order = np.argsort(-np.asarray(lengths, dtype=np.float64), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


class _IndexedItems(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return index, self.items[index]


def _embed(model, items, batches, make_inputs, features_fn, accelerator, desc, progress, inference_precision):
    def collate(pairs):
        indices = torch.tensor([p[0] for p in pairs])
        return indices, make_inputs([p[1] for p in pairs], indices)

    loader = DataLoader(_IndexedItems(items), batch_sampler=batches, collate_fn=collate)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader, device_placement=False)
    device = next(model.parameters()).device
    is_main = accelerator is None or accelerator.is_main_process
    all_indices, all_embeds = [], []
    with torch.inference_mode():
        for indices, inputs in tqdm(loader, desc=desc, disable=not (progress and is_main), leave=False):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with inference_autocast(device, inference_precision):
                embeds = features_fn(**inputs).pooler_output.float()
            indices = indices.to(device)
            if accelerator is not None:
                # Length-sorted batches differ in size across processes, and accelerate repeats items to even out
                # the last batches: pad to a common size, gather, then keep each index once (padding has index -1).
                indices = accelerator.pad_across_processes(indices, dim=0, pad_index=-1)
                embeds = accelerator.pad_across_processes(embeds, dim=0)
                indices, embeds = accelerator.gather((indices, embeds))
                keep = indices >= 0
                indices, embeds = indices[keep], embeds[keep]
            all_indices.append(indices.cpu())
            all_embeds.append(embeds.cpu())
    indices, embeds = torch.cat(all_indices), torch.cat(all_embeds)
    result = torch.zeros(len(items), embeds.shape[1])
    seen = torch.zeros(len(items), dtype=torch.bool)
    result[indices], seen[indices] = embeds, True
    if not bool(seen.all()):
        raise RuntimeError(f"{int((~seen).sum())} items were not embedded; this is a bug in batching.")
    return result.numpy()


def embed_clips(
    model, processor, clips, batch_size=16, accelerator=None, progress=True, inference_precision=None, durations=None
):
    """`(len(clips), d)` L2-normalised audio embeddings at full width; clips are anything the processor accepts.
    Raises `ValueError` naming the clip (index and path) that cannot be decoded."""
    durations = [clip_duration(c) for c in clips] if durations is None else durations

    def make_inputs(batch, indices):
        waveforms = [
            load_audio(c, None, SAMPLE_RATE, name=describe_audio(c, f"clip {int(i)}")) for c, i in zip(batch, indices)
        ]
        return dict(processor(audio=waveforms, sampling_rate=SAMPLE_RATE))

    return _embed(
        model,
        clips,
        length_sorted_batches(durations, batch_size),
        make_inputs,
        model.get_audio_features,
        accelerator,
        "audio",
        progress,
        inference_precision,
    )


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
    lengths = [len(key) for key in row_of]

    def make_inputs(batch, indices):
        return dict(processor(text=list(batch)))

    embeds = _embed(
        model,
        unique,
        length_sorted_batches(lengths, batch_size),
        make_inputs,
        model.get_text_features,
        accelerator,
        "text",
        progress,
        inference_precision,
    )
    return embeds[[row_of[key] for key in keys]]


def at_dim(embeds: np.ndarray, dim: int) -> np.ndarray:
    """Truncate to a Matryoshka prefix and re-normalise."""
    return truncate_embeddings(torch.from_numpy(embeds), dim).numpy()
