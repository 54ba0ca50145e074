"""Audio-caption data for training: tables from `datasets`, decoding with soundfile, batches for WavLink.

Audio stays as paths or bytes in the tables (`Audio(decode=False)` for Hub datasets) and is decoded here with
soundfile and resampled with soxr, so neither torchcodec nor FFmpeg is needed.
"""

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from processing_wavlink import SAMPLE_RATE, audio_duration, describe_audio, load_audio

logger = logging.getLogger(__name__)

LOCAL_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class BadSampleError(ValueError):
    """A sample that cannot be used (undecodable, empty, non-finite audio or no caption)."""


def load_caption_table(
    source: str,
    audio_column: str = "audio",
    caption_column: str = "caption",
    split: str = "train",
    dataset_config: str | None = None,
    streaming: bool = False,
):
    """Load one audio-caption table as a `datasets` (Iterable)Dataset with columns `audio`, `caption` (and
    `duration` when the source has it).

    `source` is a local CSV/TSV/JSON/JSONL/Parquet file (relative audio paths are resolved against its folder), or a
    Hub dataset id / local dataset folder (its `split` is used, and an `Audio` column is kept undecoded).
    """
    import datasets

    suffix = Path(source).suffix.lower()
    if suffix in LOCAL_BUILDERS:
        if not Path(source).is_file():
            raise FileNotFoundError(f"data file {source!r} does not exist.")
        kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
        table = datasets.load_dataset(
            LOCAL_BUILDERS[suffix], data_files=str(source), split="train", streaming=streaming, **kwargs
        )
        root = str(Path(source).resolve().parent)
    else:
        table = datasets.load_dataset(source, dataset_config, split=split, streaming=streaming)
        root = None
    columns = list(table.column_names or table.features or [])
    for role, column in (("audio_column", audio_column), ("caption_column", caption_column)):
        if column not in columns:
            raise ValueError(f"{source}: {role}={column!r} is not a column; available columns: {columns}.")
    if isinstance((table.features or {}).get(audio_column), datasets.Audio):
        table = table.cast_column(audio_column, datasets.Audio(decode=False))
    keep = [audio_column, caption_column] + (["duration"] if "duration" in columns else [])
    table = table.select_columns(keep)
    if audio_column != "audio":
        table = table.rename_column(audio_column, "audio")
    if caption_column != "caption":
        table = table.rename_column(caption_column, "caption")
    if root is not None:
        table = table.map(lambda row: {"audio": _resolve(row["audio"], root)})
    return table


def combine_tables(tables, probabilities=None, seed: int = 0):
    """Mix several training tables: concatenated (each in proportion to its size) or interleaved with
    `probabilities` until every table has been seen whole."""
    import datasets

    if len(tables) == 1:
        return tables[0]
    if probabilities:
        if len(probabilities) != len(tables):
            raise ValueError(f"train_mix_probabilities has {len(probabilities)} values for {len(tables)} datasets.")
        return datasets.interleave_datasets(
            tables, probabilities=probabilities, seed=seed, stopping_strategy="all_exhausted"
        )
    return datasets.concatenate_datasets(tables)


def _resolve(audio, root: str):
    if isinstance(audio, str) and audio and not os.path.isabs(audio) and "://" not in audio:
        return os.path.join(root, audio)
    return audio


def parse_captions(cell, name: str) -> list[str]:
    """A caption cell holds one caption, a list of captions, or a JSON list encoded as a string."""
    if isinstance(cell, str) and cell.lstrip().startswith("["):
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError as error:
            raise BadSampleError(f"{name}: caption cell looks like a JSON list but does not parse ({error}).") from None
    captions = [cell] if isinstance(cell, str) else list(cell or [])
    captions = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    if not captions:
        raise BadSampleError(f"{name}: no caption.")
    return captions


def describe_row(index: int, audio) -> str:
    return describe_audio(audio, f"row {index}")


def decode_sample(row: dict, index: int, rng: np.random.Generator, max_samples: int | None) -> dict:
    """Decode one row: random crop to `max_samples`, one caption sampled from the cell."""
    name = describe_row(index, row["audio"])
    try:
        waveform = load_audio(row["audio"], None, SAMPLE_RATE, name=name, strict=True)  # a truncated file is bad
    except ValueError as error:
        raise BadSampleError(str(error)) from None
    captions = parse_captions(row["caption"], name)
    if max_samples is not None and waveform.shape[0] > max_samples:
        start = int(rng.integers(0, waveform.shape[0] - max_samples + 1))
        waveform = waveform[start : start + max_samples]
    return {"waveform": waveform, "caption": captions[int(rng.integers(len(captions)))]}


class AudioCaptionDataset(Dataset):
    """Map-style training data. A bad row is skipped for the next good one, and the skip is counted in the item's
    `bad` field, so batch sizes stay equal across processes. Crops and caption choices are drawn from a generator
    seeded by (seed, epoch, row), so they are the same after a resume."""

    def __init__(self, table, max_seconds: float | None = 30.0, seed: int = 0, max_consecutive_bad: int = 50):
        self.table = table
        self.max_samples = int(max_seconds * SAMPLE_RATE) if max_seconds else None
        self.seed = seed
        self.epoch = 0
        self.max_consecutive_bad = max_consecutive_bad

    def __len__(self) -> int:
        return len(self.table)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        errors = []
        for attempt in range(min(self.max_consecutive_bad, len(self))):
            row_index = (index + attempt) % len(self)
            rng = np.random.default_rng([self.seed, self.epoch, row_index])
            try:
                item = decode_sample(self.table[row_index], row_index, rng, self.max_samples)
            except BadSampleError as error:
                errors.append(str(error))
                continue
            return {**item, "bad": len(errors), "errors": errors}
        raise RuntimeError(f"{len(errors)} consecutive bad samples from row {index}; the last: {errors[-1]}")

    def durations(self) -> np.ndarray:
        """Clip durations in seconds (from a `duration` column, else read from the files' headers)."""
        if "duration" in self.table.column_names:
            return np.asarray(self.table["duration"], dtype=np.float64)
        # an unreadable file reads as 0 s: it is skipped at decode time, and any length groups it
        return np.asarray([audio_duration(row["audio"]) or 0.0 for row in self.table.select_columns(["audio"])])


class StreamingAudioCaptionDataset(IterableDataset):
    """Streaming training data for corpora larger than the disk. Repeats forever (training is bounded by
    `max_steps`), so every process always has a next batch. Bad rows are skipped and counted."""

    def __init__(self, table, max_seconds: float | None = 30.0, seed: int = 0, shuffle_buffer: int = 1000):
        self.table = table
        self.max_samples = int(max_seconds * SAMPLE_RATE) if max_seconds else None
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer

    def __iter__(self):
        epoch, bad, errors = 0, 0, []
        while True:
            table = (
                self.table.shuffle(seed=self.seed + epoch, buffer_size=self.shuffle_buffer)
                if self.shuffle_buffer
                else self.table
            )
            seen = 0
            for index, row in enumerate(table):
                seen += 1
                rng = np.random.default_rng([self.seed, epoch, index])
                try:
                    item = decode_sample(row, index, rng, self.max_samples)
                except BadSampleError as error:
                    bad, errors = bad + 1, errors + [str(error)]
                    continue
                yield {**item, "bad": bad, "errors": errors}
                bad, errors = 0, []
            if seen == 0:
                raise RuntimeError("the streaming training set is empty.")
            epoch += 1


class LengthGroupedBatchSampler:
    """Yields full batches of indices in a seeded random order that changes with `set_epoch`.

    With `group_by_length`, indices are shuffled, cut into mega-batches of `mega_batch_factor` batches, sorted by
    duration within each, cut into batches, and the batch order is shuffled again: clips of similar length share a
    batch (little padding) while batch order stays random.
    """

    def __init__(
        self, lengths, batch_size: int, seed: int = 0, group_by_length: bool = False, mega_batch_factor: int = 50
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.mega_batch_factor = mega_batch_factor
        self.drop_last = True  # contrastive batches must be full and equal on every process
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).numpy()
        if self.group_by_length:
            mega = self.batch_size * self.mega_batch_factor
            order = np.concatenate(
                [
                    chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                    for chunk in np.array_split(order, max(1, -(-len(order) // mega)))
                ]
            )
        batches = [
            order[i : i + self.batch_size].tolist() for i in range(0, len(order) - self.batch_size + 1, self.batch_size)
        ]
        if self.group_by_length:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        yield from batches


class AudioCaptionCollator:
    """Turns decoded items into a batch (in a DataLoader worker): captions tokenized, waveforms padded for one batched
    log-mel STFT on the model's device (`WavLinkProcessor.log_mel`, called by the training loop); carries the
    bad-sample count."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items: list[dict]) -> dict:
        batch = dict(self.processor(text=[i["caption"] for i in items]))
        batch.update(self.processor.pad_waveforms([i["waveform"] for i in items]))
        batch["num_bad"] = torch.tensor(sum(i["bad"] for i in items))
        batch["num_samples"] = torch.tensor(len(items) + int(batch["num_bad"]))
        errors = [e for i in items for e in i["errors"]]
        if errors:
            logger.warning("skipped %d bad sample(s), e.g. %s", len(errors), errors[0])
        return batch
