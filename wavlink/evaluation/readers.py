"""Readers for evaluation sets: retrieval (Clotho, AudioCaps, any named-column table), zero-shot classification
(ESC-50, UrbanSound8K, a label CSV or a folder per class) and multiple choice (AIR-Bench-style JSON).

Every reader returns plain Python lists of clip references (paths or datasets-style dicts) and texts, so the same
evaluation code serves every layout. Missing audio files are reported up front, all of them at once.
"""

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from processing_wavlink import AUDIO_SUFFIXES

from ..training.data import parse_captions


@dataclass
class RetrievalSet:
    clips: list
    captions: list[list[str]]  # 1..N captions per clip
    name: str = "retrieval"


@dataclass
class ClassificationSet:
    clips: list
    targets: list[int]
    labels: list[str]
    name: str = "classification"


@dataclass
class MultipleChoiceSet:
    clips: list
    questions: list[str]
    options: list[list[str]]
    answers: list[int]
    name: str = "multiple-choice"
    extra: dict = field(default_factory=dict)


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else data.get("data", data.get("rows", []))
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    raise ValueError(f"{path}: unsupported table format {suffix!r}; use CSV, TSV, JSON, JSONL or Parquet.")


def _check_files(clips: list, source) -> None:
    missing = [c for c in clips if isinstance(c, str) and not os.path.exists(c)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{source}: {len(missing)} audio file(s) not found: {shown}")


def _audio_path(audio_dir: Path, name: str) -> str:
    return name if os.path.isabs(name) else str(audio_dir / name)


def read_retrieval_set(
    path,
    audio_dir=None,
    layout: str = "auto",
    audio_column: str = "audio",
    caption_column: str = "caption",
    audio_template: str = "{youtube_id}.wav",
) -> RetrievalSet:
    """Read a retrieval set.

    Layouts: `clotho` (`file_name, caption_1..caption_N`), `audiocaps` (one row per caption:
    `audiocap_id, youtube_id, start_time, caption`; rows of one clip are grouped and its file is found by
    `audio_template`), or `table` (any CSV/TSV/JSON/JSONL/Parquet with an audio column and a caption column holding
    one caption or a list; several rows for the same audio are grouped). `auto` picks from the header.
    `audio_dir` defaults to the table's folder.
    """
    path = Path(path)
    audio_dir = Path(audio_dir) if audio_dir else path.parent
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path}: the table is empty.")
    header = list(rows[0])
    if layout == "auto":
        layout = (
            "clotho"
            if "file_name" in header and "caption_1" in header
            else "audiocaps"
            if {"youtube_id", "caption"} <= set(header)
            else "table"
        )
    grouped: dict[str, list[str]] = {}
    for index, row in enumerate(rows):
        name = f"{path}: row {index + 2 if path.suffix.lower() in ('.csv', '.tsv') else index}"
        if layout == "clotho":
            clip = _audio_path(audio_dir, row["file_name"])
            captions = [row[k].strip() for k in header if k.startswith("caption_") and row.get(k) and row[k].strip()]
        elif layout == "audiocaps":
            clip = _audio_path(audio_dir, audio_template.format(**row))
            captions = [row["caption"].strip()]
        elif layout == "table":
            for role, column in (("audio_column", audio_column), ("caption_column", caption_column)):
                if column not in row:
                    raise ValueError(f"{path}: {role}={column!r} is not a column; available columns: {header}.")
            clip = _audio_path(audio_dir, row[audio_column])
            captions = parse_captions(row[caption_column], name)
        else:
            raise ValueError(f"layout={layout!r} is not one of 'auto', 'clotho', 'audiocaps', 'table'.")
        if not captions:
            raise ValueError(f"{name}: no caption.")
        grouped.setdefault(clip, []).extend(captions)
    clips = list(grouped)
    _check_files(clips, path)
    return RetrievalSet(clips, [grouped[c] for c in clips], name=path.stem)


def read_classification_set(
    path, layout: str = "auto", fold: int | None = None, audio_column: str = "audio", label_column: str = "label"
) -> ClassificationSet:
    """Read a labelled set for zero-shot classification.

    Layouts: `esc50` (the ESC-50 root or its `meta/esc50.csv`; audio in `audio/`; `fold` filters, fold 1 is the usual
    test fold), `us8k` (the UrbanSound8K root or `metadata/UrbanSound8K.csv`; audio in `audio/fold<k>/`), `csv`
    (a table with `audio_column` and `label_column`) or `folder` (one sub-folder of audio files per class).
    """
    path = Path(path)
    if layout == "auto":
        layout = (
            "esc50"
            if (path / "meta" / "esc50.csv").exists() or path.name == "esc50.csv"
            else "us8k"
            if (path / "metadata" / "UrbanSound8K.csv").exists() or path.name == "UrbanSound8K.csv"
            else "folder"
            if path.is_dir()
            else "csv"
        )
    pairs = []
    if layout == "esc50":
        table = path if path.suffix == ".csv" else path / "meta" / "esc50.csv"
        root = table.parent.parent
        for row in _read_rows(table):
            if fold is None or int(row["fold"]) == fold:
                pairs.append((str(root / "audio" / row["filename"]), row["category"].replace("_", " ")))
    elif layout == "us8k":
        table = path if path.suffix == ".csv" else path / "metadata" / "UrbanSound8K.csv"
        root = table.parent.parent
        for row in _read_rows(table):
            if fold is None or int(row["fold"]) == fold:
                pairs.append(
                    (
                        str(root / "audio" / f"fold{row['fold']}" / row["slice_file_name"]),
                        row["class"].replace("_", " "),
                    )
                )
    elif layout == "csv":
        for row in _read_rows(path):
            for column in (audio_column, label_column):
                if column not in row:
                    raise ValueError(f"{path}: column {column!r} not found; available columns: {list(row)}.")
            pairs.append((_audio_path(path.parent, row[audio_column]), str(row[label_column])))
    elif layout == "folder":
        for class_dir in sorted(p for p in path.iterdir() if p.is_dir()):
            for file in sorted(class_dir.rglob("*")):
                if file.suffix.lower() in AUDIO_SUFFIXES:
                    pairs.append((str(file), class_dir.name.replace("_", " ")))
    else:
        raise ValueError(f"layout={layout!r} is not one of 'auto', 'esc50', 'us8k', 'csv', 'folder'.")
    if not pairs:
        raise ValueError(f"{path}: no labelled clips found (layout={layout}, fold={fold}).")
    labels = sorted({label for _, label in pairs})
    clips = [clip for clip, _ in pairs]
    _check_files(clips, path)
    return ClassificationSet(clips, [labels.index(label) for _, label in pairs], labels, name=path.stem)


def read_multiple_choice_set(path, audio_dir=None) -> MultipleChoiceSet:
    """AIR-Bench-style JSON (a list of objects, or JSONL): `path` (or `audio`), `question`, `choice_a`..`choice_d`
    (or a `choices` list) and `answer_gt` (the correct option's text, or its letter)."""
    path = Path(path)
    audio_dir = Path(audio_dir) if audio_dir else path.parent
    clips, questions, options, answers = [], [], [], []
    for index, row in enumerate(_read_rows(path)):
        name = f"{path}: item {index}"
        choices = row.get("choices") or [
            row[k] for k in sorted(row) if k.startswith("choice_") and row[k] not in (None, "")
        ]
        if len(choices) < 2:
            raise ValueError(f"{name}: needs at least two options.")
        answer = str(row.get("answer_gt", row.get("answer", ""))).strip()
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if answer in choices:
            answers.append(choices.index(answer))
        elif answer.upper() in letters:
            answers.append(letters.index(answer.upper()))
        else:
            raise ValueError(f"{name}: answer {answer!r} is neither one of the options nor an option letter.")
        audio = row.get("path") or row.get("audio")
        if not audio:
            raise ValueError(f"{name}: no 'path' or 'audio' field.")
        clips.append(_audio_path(audio_dir, audio))
        questions.append(str(row.get("question", "")).strip())
        options.append([str(c) for c in choices])
    _check_files(clips, path)
    return MultipleChoiceSet(clips, questions, options, answers, name=path.stem)
