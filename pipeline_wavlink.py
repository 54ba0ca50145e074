"""The `wavlink-embedding` pipeline, and the embedding loop it shares with evaluation and indexing.

Served from the Hub beside the model (the config's `custom_pipelines` names it), so
`pipeline(model=repo, trust_remote_code=True)` returns it:

    embed = pipeline(model="me/wavlink-base", trust_remote_code=True)   # on the GPU when there is one
    embed(audio=["a.wav", "b.mp3"], dim=128)   # float32 array (2, 128)
    embed(text=["a dog barks"])                # float32 array (1, d)
    embed(dataset["audio"])                    # a datasets column: (len(dataset), d), in order
    for row in embed(path for path in paths):  # a generator streams: one (d,) row per input, in order
        ...

How audio reaches the model: clips are planned into batches of similar length (little padding), then DataLoader
workers decode, downmix, resample and pad each batch on the host while the model runs, and the log-mel of a whole
batch is one STFT on the model's device (`WavLinkProcessor.log_mel`).

Imports only torch, numpy, transformers and sibling modules at the top level.
"""

import os
import warnings
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Pipeline

try:
    from .configuration_wavlink import check_matryoshka_dim, check_positive_size, check_worker_count
    from .processing_wavlink import AUDIO_SUFFIXES, SAMPLE_RATE, audio_duration, describe_audio, is_array, load_audio
except ImportError:
    from configuration_wavlink import check_matryoshka_dim, check_positive_size, check_worker_count
    from processing_wavlink import AUDIO_SUFFIXES, SAMPLE_RATE, audio_duration, describe_audio, is_array, load_audio

# Inputs that arrive as a stream (a generator) are planned and embedded this many at a time.
STREAM_CHUNK = 4096
# DataLoader workers decoding audio beside a model on an accelerator: one per spare core, at most this many.
MAX_DEFAULT_WORKERS = 32
ON_ERROR = ("raise", "skip")
MODALITIES = (None, "audio", "text")


def default_num_workers(device) -> int:
    """Decoding workers beside a model on `device`: one per core beside the main process (at most
    `MAX_DEFAULT_WORKERS`) when the model runs on an accelerator; none when it runs on the CPU, whose threads already
    use every core (on 2 cores a worker beside the model cut end-to-end speed from 0.90 to 0.68 of model-only)."""
    if torch.device(device).type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_DEFAULT_WORKERS, cores - 1))


def length_sorted_batches(lengths, batch_size: int) -> list[list[int]]:
    """Indices cut into batches of `batch_size`, longest first: clips of similar length share a batch."""
    check_positive_size("batch_size", batch_size)
    order = np.argsort(-np.asarray(lengths, dtype=np.float64), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


@dataclass
class EmbeddedBatch:
    """One batch's result: `embeds[k]` `(dim,)` belongs to input `indices[k]`; `seconds[k]` is its decoded length
    (audio only). `failures` names the inputs of the batch that could not be decoded (with `on_error="skip"`)."""

    indices: np.ndarray
    embeds: np.ndarray
    seconds: np.ndarray
    failures: list[str]


class AudioBatches(Dataset):
    """Batch `b` of a plan, prepared on the host (in a DataLoader worker): every clip decoded, downmixed, resampled,
    cut into 30-s windows and padded for one batched STFT.

    A clip that cannot be decoded is left out and its named error is returned in `failures`; warnings (a truncated
    file) are returned too, so the main process re-issues them: nothing a worker sees is lost.
    """

    def __init__(self, processor, items, plan, sampling_rate=None, label="audio[{}]"):
        self.processor, self.items, self.plan = processor, items, plan
        self.sampling_rate, self.label = sampling_rate, label

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> dict:
        indices, waveforms, failures = [], [], []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for index in self.plan[b]:
                item = self.items[index]
                name = describe_audio(item, self.label.format(index))
                try:
                    waveforms.append(load_audio(item, self.sampling_rate, SAMPLE_RATE, name=name))
                except ValueError as error:
                    failures.append(str(error))
                    continue
                indices.append(index)
        batch = {
            "indices": np.asarray(indices, dtype=np.int64),
            "seconds": np.asarray([len(w) / SAMPLE_RATE for w in waveforms]),
            "failures": failures,
            "warnings": [(str(w.message), w.category) for w in caught],
        }
        if waveforms:
            batch.update(self.processor.pad_waveforms(waveforms))
        return batch


def _as_is(batch):
    return batch


def iter_audio_embeddings(
    model,
    processor,
    items,
    dim=None,
    batch_size=16,
    lengths=None,
    sampling_rate=None,
    num_workers=None,
    inference_precision=None,
    on_error="raise",
    label="audio[{}]",
    shard=(0, 1),
    progress=False,
):
    """Embed `items` (anything `load_audio` takes; a sequence) in length-sorted batches; yields `EmbeddedBatch`es.

    `lengths` orders the batches (default: each item's duration from its header or array); `num_workers` decoding
    workers (default `default_num_workers(model.device)`; 0 decodes in this process); `shard=(rank, world)` embeds every
    world-th batch from the rank-th, for multi-process runs. With `on_error="raise"` a clip that cannot be decoded
    raises `ValueError` naming it; with `"skip"` it is reported in its batch's `failures`.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r} is not one of {ON_ERROR}.")
    if lengths is None:
        lengths = [audio_duration(item, sampling_rate) or 0.0 for item in items]
    rank, world = shard
    plan = length_sorted_batches(lengths, batch_size)[rank::world]
    device = model.device
    workers = default_num_workers(device) if num_workers is None else num_workers
    check_worker_count("num_workers", workers)
    workers = min(workers, len(plan))
    loader = DataLoader(
        AudioBatches(processor, items, plan, sampling_rate, label),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )

    def inputs_of(batch):
        for message, category in batch["warnings"]:
            warnings.warn(message, category, stacklevel=4)
        if batch["failures"] and on_error == "raise":
            raise ValueError(batch["failures"][0])
        if len(batch["indices"]) == 0:
            return None
        return processor.log_mel(
            batch["padded_waveforms"], batch["waveform_lengths"], batch.get("audio_window_counts"), device=device
        )

    def embed(inputs):
        return model.get_audio_features(**inputs, dim=dim).pooler_output

    yield from _run(loader, inputs_of, embed, device, inference_precision, progress, sum(map(len, plan)), "audio")


def iter_text_embeddings(
    model, processor, texts, dim=None, batch_size=64, inference_precision=None, shard=(0, 1), progress=False
):
    """Embed `texts` in batches of similar token length; yields `EmbeddedBatch`es (see `iter_audio_embeddings`)."""
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"text[{bad[0]}] must be a string, got {type(texts[bad[0]]).__name__}.")
    rank, world = shard
    plan = length_sorted_batches([len(t) for t in texts], batch_size)[rank::world]
    batches = ({"indices": np.asarray(b), "seconds": np.zeros(len(b)), "failures": [], "texts": b} for b in plan)

    def inputs_of(batch):
        return dict(processor(text=[texts[i] for i in batch["texts"]]))

    def embed(inputs):
        return model.get_text_features(**inputs, dim=dim).pooler_output

    yield from _run(batches, inputs_of, embed, model.device, inference_precision, progress, len(texts), "text")


def _run(batches, inputs_of, embed, device, inference_precision, progress, total, desc):
    """The loop both modalities share. A batch's result is copied to the host only after the next batch has been
    launched, so on a GPU the copy's wait overlaps with work already queued."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    pending = None
    for batch in batches:
        inputs = inputs_of(batch)
        result = None
        if inputs is not None:
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            with torch.inference_mode(), _autocast(device, inference_precision):
                result = embed(inputs).float()
        if pending is not None:
            yield _finish(*pending)
        pending = (batch, result)
        bar.update(len(batch["indices"]) + len(batch["failures"]))
    if pending is not None:
        yield _finish(*pending)
    bar.close()


def _finish(batch, result) -> EmbeddedBatch:
    embeds = result.cpu().numpy() if result is not None else np.zeros((0, 0), np.float32)
    return EmbeddedBatch(batch["indices"], embeds, batch["seconds"], batch["failures"])


def _autocast(device, inference_precision):
    # Imported here: modeling_wavlink imports this module (to serve it beside the model), not the other way.
    try:
        from .modeling_wavlink import inference_autocast
    except ImportError:
        from modeling_wavlink import inference_autocast
    return inference_autocast(device, inference_precision)


def gather_embeddings(accelerator, batches: list[EmbeddedBatch], total: int, dim: int) -> np.ndarray:
    """Assemble `(total, dim)` rows from this process's batches and, with an `accelerator`, every other process's
    (one padded gather at the end: length-sorted shards differ in size). Raises if a row was never embedded."""
    indices = [b.indices for b in batches if len(b.indices)]
    embeds = [b.embeds for b in batches if len(b.indices)]
    indices = torch.from_numpy(np.concatenate(indices)) if indices else torch.zeros(0, dtype=torch.long)
    embeds = torch.from_numpy(np.concatenate(embeds)) if embeds else torch.zeros(0, dim)
    if accelerator is not None and accelerator.num_processes > 1:
        indices, embeds = indices.to(accelerator.device), embeds.to(accelerator.device)
        indices = accelerator.pad_across_processes(indices, dim=0, pad_index=-1)
        embeds = accelerator.pad_across_processes(embeds, dim=0)
        indices, embeds = accelerator.gather((indices, embeds))
        keep = indices >= 0
        indices, embeds = indices[keep].cpu(), embeds[keep].cpu()
    out = torch.zeros(total, dim)
    seen = torch.zeros(total, dtype=torch.bool)
    out[indices], seen[indices] = embeds, True
    if not bool(seen.all()):
        raise RuntimeError(f"{int((~seen).sum())} items were not embedded; this is a bug in batching.")
    return out.numpy()


class WavLinkEmbeddingPipeline(Pipeline):
    """Embeds audio (paths, arrays with `sampling_rate`, datasets-style dicts) or text with a WavLink model.

    Call with `audio=` / `text=`, or positionally (`modality="audio"|"text"` says which; without it, a string naming
    an existing file is audio, other strings are text, a string with an audio suffix naming no file is an error):
    a single item, a list, a 2-D array (one clip per row), a `datasets.Dataset` (its audio column) or column, or a
    generator. Options: `dim=` (a Matryoshka size), `batch_size=`,
    `sampling_rate=`, `num_workers=` (decoding workers; default: one per spare core on a GPU, none on a CPU),
    `inference_precision="bf16"` (bfloat16 autocast; default: the config's) and `progress=`.

    Returns a float32 numpy array `(n, dim)` of L2-normalised rows in input order, `(dim,)` for a single input, or,
    for a generator, a generator of `(dim,)` rows in input order.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False

    def __call__(
        self,
        inputs=None,
        *,
        audio=None,
        text=None,
        dim=None,
        batch_size=16,
        sampling_rate=None,
        num_workers=None,
        inference_precision=None,
        progress=None,
        modality=None,
    ):
        if inputs is not None:
            if audio is not None or text is not None:
                raise ValueError("Give the inputs positionally or as audio=/text=, not both.")
        elif (audio is None) == (text is None):
            raise ValueError("Give either audio=... or text=... (not both).")
        if modality not in MODALITIES:
            raise ValueError(f"modality={modality!r} is not one of {MODALITIES}.")
        if modality is not None and inputs is None:
            raise ValueError("modality= goes with positional inputs; audio=/text= already say which.")
        check_positive_size("batch_size", batch_size)
        if num_workers is not None:
            check_worker_count("num_workers", num_workers)
        if inference_precision not in (None, "fp32", "bf16"):
            raise ValueError(f"inference_precision={inference_precision!r} is not one of 'fp32', 'bf16'.")
        options = dict(
            dim=check_matryoshka_dim(dim, self.model.config),
            batch_size=batch_size,
            sampling_rate=sampling_rate,
            num_workers=num_workers,
            inference_precision=inference_precision,
            progress=progress,
        )
        given = next(v for v in (inputs, audio, text) if v is not None)
        modality = "audio" if audio is not None else "text" if text is not None else modality
        if _is_stream(given):
            stream = _audio_column(given) if hasattr(given, "column_names") else given
            return self._stream(iter(stream), modality, options)
        if is_array(given) and getattr(given, "ndim", 1) == 2:
            given = list(given)  # a 2-D array is a batch, one clip per row, as the processor reads it
        single = not _is_sequence(given)
        items = [given] if single else _sequence_of(given)
        if not items:
            raise ValueError("Nothing to embed: the input is empty.")
        embeds = self._embed(items, modality or _modality_of(items), options)
        return embeds[0] if single else embeds

    def _embed(self, items, modality, options) -> np.ndarray:
        dim, batch_size, progress = options["dim"], options["batch_size"], options["progress"]
        show = len(items) > batch_size * 4 if progress is None else progress
        if modality == "text":
            batches = iter_text_embeddings(
                self.model, self.processor, items, dim, batch_size * 4, options["inference_precision"], progress=show
            )
        else:
            batches = iter_audio_embeddings(
                self.model,
                self.processor,
                items,
                dim,
                batch_size,
                sampling_rate=options["sampling_rate"],
                num_workers=options["num_workers"] if len(items) > batch_size else 0,  # one batch: no worker start-up
                inference_precision=options["inference_precision"],
                progress=show,
            )
        return gather_embeddings(None, list(batches), len(items), dim)

    def _stream(self, stream, modality, options):
        while True:
            chunk = list(islice(stream, STREAM_CHUNK))
            if not chunk:
                return
            modality = modality or _modality_of(chunk)
            yield from self._embed(chunk, modality, {**options, "progress": False})

    # The Pipeline API's per-item steps (used when the pipeline is driven item by item by transformers' own loops).
    def _sanitize_parameters(self, dim=None, sampling_rate=None, **kwargs):
        return {"sampling_rate": sampling_rate}, {"dim": dim}, {}

    def preprocess(self, inputs, sampling_rate=None):
        if _modality_of([inputs]) == "text":
            return dict(self.processor(text=[inputs]))
        return dict(self.processor(audio=[inputs], sampling_rate=sampling_rate))

    def _forward(self, model_inputs, dim=None):
        features = self.model.get_text_features if "input_ids" in model_inputs else self.model.get_audio_features
        with torch.inference_mode():
            return {"embeds": features(**model_inputs, dim=dim).pooler_output}

    def postprocess(self, model_outputs):
        return model_outputs["embeds"][0].detach().float().cpu().numpy()


def _modality_of(items) -> str:
    """The modality of positional inputs, where it can be read without guessing: a string naming an existing file is
    audio, any other string is text, anything else (arrays, dicts, bytes, decoders) is audio. A string with an audio
    suffix that names no file is an error (a missing file, or text that looks like one), and so is a mix."""
    kinds = set()
    for index, item in enumerate(items):
        if not isinstance(item, str):
            kinds.add("audio")
        elif os.path.isfile(item):
            kinds.add("audio")
        elif item.lower().endswith(AUDIO_SUFFIXES):
            raise ValueError(
                f"input {index} ({item!r}) looks like an audio file, but no such file exists; pass audio=[...] to "
                "read it as audio (and see the error), or text=[...] / modality='text' to embed the string."
            )
        else:
            kinds.add("text")
    if len(kinds) > 1:
        raise ValueError(
            "the inputs mix audio and text; embed them in separate calls, with audio=[...] and text=[...]."
        )
    return kinds.pop()


def _is_stream(value) -> bool:
    """A generator, an iterator or a streaming `datasets.IterableDataset`: read in chunks, answered with a
    generator."""
    return hasattr(value, "__next__") or (hasattr(value, "column_names") and not hasattr(value, "__len__"))


def _is_sequence(value) -> bool:
    """A list or tuple, a `datasets.Dataset` or a column of one: embedded whole, answered with an array."""
    return isinstance(value, (list, tuple)) or hasattr(value, "column_names") or _is_datasets_column(value)


def _is_datasets_column(value) -> bool:
    return type(value).__name__ == "Column" and type(value).__module__.startswith("datasets")


def _sequence_of(value) -> list:
    """The items of a sequence input. A `datasets.Dataset` gives its audio column (the one `Audio` feature, else a
    column named "audio"), and an `Audio` column is read undecoded, so decoding happens in the pipeline's workers."""
    if _is_datasets_column(value) and hasattr(value.source, "column_names"):
        value = _audio_column(value.source, value.column_name)
    elif hasattr(value, "column_names"):
        value = _audio_column(value)
    return list(value)


def _audio_column(dataset, name=None):
    """A (streaming) dataset's audio column, undecoded when it is an `Audio` feature."""
    import datasets

    features = dataset.features or {}
    if name is not None:
        audio = [name] if isinstance(features.get(name), datasets.Audio) else []
        if not audio:
            return dataset[name]
    else:
        audio = [name for name, feature in features.items() if isinstance(feature, datasets.Audio)]
    if len(audio) > 1:
        raise ValueError(f"the dataset has several audio columns {audio}; pass one, e.g. pipe(dataset[{audio[0]!r}]).")
    name = audio[0] if audio else "audio" if "audio" in dataset.column_names else None
    if name is None:
        raise ValueError(f"the dataset has no audio column; its columns are {dataset.column_names}.")
    if audio:
        dataset = dataset.cast_column(name, datasets.Audio(decode=False))
    if not hasattr(dataset, "__len__"):  # streaming: rows arrive one at a time
        return (row[name] for row in dataset)
    return dataset[name]


__all__ = ["WavLinkEmbeddingPipeline", "iter_audio_embeddings", "iter_text_embeddings", "gather_embeddings"]
