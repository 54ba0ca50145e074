"""Evaluation tasks at every Matryoshka dim: audio-text retrieval, zero-shot classification, multiple choice.

Every task takes `dims` (default: the model's Matryoshka sizes) and the embedding options of `Embedder`:
`accelerator`, `batch_size`, `progress`, `inference_precision`, `num_workers`. The model runs where it is.
"""

import numpy as np
import torch
import torch.nn.functional as F

from .embedding import at_dim, embed_clips, embed_texts
from .metrics import classification_metrics, retrieval_metrics


class Embedder:
    """Embeds clips and texts for a task: each item once, in length-sorted batches (texts in batches 4x larger),
    split across processes when an `accelerator` is given."""

    def __init__(
        self, model, processor, accelerator=None, batch_size=16, progress=True, inference_precision=None,
        num_workers=None,
    ):  # fmt: skip
        self.model, self.processor, self.accelerator = model, processor, accelerator
        self.batch_size, self.progress, self.inference_precision = batch_size, progress, inference_precision
        self.num_workers = num_workers

    def audio(self, clips):
        return embed_clips(self.model, self.processor, clips, self.batch_size, self.accelerator, self.progress,
                           self.inference_precision, num_workers=self.num_workers)  # fmt: skip

    def text(self, texts):
        return embed_texts(self.model, self.processor, texts, self.batch_size * 4, self.accelerator, self.progress,
                           self.inference_precision)  # fmt: skip


def retrieval_at_dims(audio_embeds, text_embeds, caption_to_clip, dims) -> dict[int, dict[str, float]]:
    """Retrieval metrics (see `metrics.retrieval_metrics`) for each Matryoshka dim."""
    return {
        int(dim): retrieval_metrics(at_dim(text_embeds, dim) @ at_dim(audio_embeds, dim).T, caption_to_clip)
        for dim in dims
    }


def evaluate_retrieval(model, processor, clips, captions, dims=None, **options) -> dict[int, dict[str, float]]:
    """Embed `clips` and their captions (`captions[i]` is a list of 1..N captions for clip i) once, then score
    both retrieval directions at every Matryoshka dim."""
    embedder = Embedder(model, processor, **options)
    if len(clips) != len(captions):
        raise ValueError(f"{len(clips)} clips but {len(captions)} caption lists.")
    flat, caption_to_clip = [], []
    for clip_index, clip_captions in enumerate(captions):
        if not clip_captions:
            raise ValueError(f"clip {clip_index} ({clips[clip_index]}) has no caption.")
        flat.extend(clip_captions)
        caption_to_clip.extend([clip_index] * len(clip_captions))
    audio = embedder.audio(clips)
    text = embedder.text(flat)
    return retrieval_at_dims(audio, text, np.asarray(caption_to_clip), dims or model.config.matryoshka_dims)


# ---------------------------------------------------------------------------------------- zero-shot, multiple choice

DEFAULT_TEMPLATE = "This is a sound of {label}."


def zero_shot_at_dims(audio_embeds, template_embeds, targets, dims) -> dict[int, dict[str, float]]:
    """Zero-shot accuracy at each dim. `template_embeds` is `(labels, templates, d)`: each label's prompt embeddings
    are truncated, re-normalised, averaged over templates and re-normalised (prompt ensembling)."""
    results = {}
    labels, templates, width = template_embeds.shape
    for dim in dims:
        prompts = at_dim(template_embeds.reshape(-1, width), dim).reshape(labels, templates, dim).mean(1)
        classes = F.normalize(torch.from_numpy(prompts), dim=-1).numpy()
        results[int(dim)] = classification_metrics(at_dim(audio_embeds, dim) @ classes.T, targets)
    return results


def evaluate_zero_shot(
    model, processor, dataset, templates=(DEFAULT_TEMPLATE,), dims=None, **options
) -> dict[int, dict[str, float]]:
    """Top-1/top-5 accuracy of zero-shot classification on a `ClassificationSet`, at every Matryoshka dim."""
    embedder = Embedder(model, processor, **options)
    prompts = [template.format(label=label) for label in dataset.labels for template in templates]
    text = embedder.text(prompts)
    audio = embedder.audio(dataset.clips)
    template_embeds = text.reshape(len(dataset.labels), len(templates), -1)
    return zero_shot_at_dims(audio, template_embeds, np.asarray(dataset.targets), dims or model.config.matryoshka_dims)


def multiple_choice_text(question: str, option: str) -> str:
    """The question joined to one option: the text whose embedding is compared with the audio."""
    return f"{question} {option}".strip()


def evaluate_multiple_choice(model, processor, dataset, dims=None, **options) -> dict[int, dict[str, float]]:
    """Accuracy on a `MultipleChoiceSet`: the option whose (question + option) embedding is nearest the audio wins."""
    embedder = Embedder(model, processor, **options)
    texts, owner = [], []
    for item, (question, choices) in enumerate(zip(dataset.questions, dataset.options)):
        texts.extend(multiple_choice_text(question, choice) for choice in choices)
        owner.extend([item] * len(choices))
    owner = np.asarray(owner)
    text = embedder.text(texts)
    audio = embedder.audio(dataset.clips)
    results = {}
    for dim in dims or model.config.matryoshka_dims:
        scores = np.einsum("nd,nd->n", at_dim(text, dim), at_dim(audio, dim)[owner])
        correct = [int(np.argmax(scores[owner == item]) == answer) for item, answer in enumerate(dataset.answers)]
        results[int(dim)] = {"accuracy": 100.0 * float(np.mean(correct))}
    return results
