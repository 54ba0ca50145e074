"""Embed a folder of audio into one index file, and search it with text or audio.

    wavlink-index ./my_sounds --model me/wavlink-base --out sounds.index --dim 128 [--int8]
    wavlink-index ./recordings --model ... --out long.index --segment_seconds 10 --segment_overlap 2
    wavlink-search sounds.index "a dog barking far away" -k 5 [--json]
    wavlink-search sounds.index --audio query.wav -k 5
    wavlink-index ./my_sounds ... --device cuda:1 --num_workers 12   # default: CUDA if available
    accelerate launch -m wavlink.search ./big_collection --model ... --out big.index   # several GPUs
    accelerate launch ... -m wavlink.search ./big --model ... --out big.index --shards  # one shard file per process
    wavlink-index merge big.index.shard-* --out big.index                             # join the shards

The index is one SQLite catalogue (see `store.py`): the model it was built with (its path or Hub id, commit and a
fingerprint of its weights and config), the settings, the files (path, size, mtime, duration) and their vectors
(one per file, or one per window with `--segment_seconds`). Indexing syncs the folder: new and changed files are
embedded, files that are gone (or renamed) are removed, unchanged ones are skipped. Files are embedded in chunks
(`--chunk`, 1024 by default; decoded by DataLoader workers while the model runs), each committed as one transaction,
so an interrupted run keeps every chunk written before it. Unreadable files are reported and skipped; only finite,
unit-norm embeddings are stored. From `--ann_threshold` vectors on (50,000 by default) a FAISS HNSW graph beside
the file answers queries approximately (see `ann.py`). An index refuses to be searched or extended with a model whose
fingerprint differs from the one it was built with.
"""

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

import numpy as np

from configuration_wavlink import check_matryoshka_dim, check_positive_size, check_worker_count
from processing_wavlink import AUDIO_SUFFIXES, audio_duration

from ..loading import add_device_arguments, add_trust_remote_code_argument
from .ann import DEFAULT_THRESHOLD, up_to_date
from .searcher import Hit, WavLinkIndex
from .store import (
    AudioIndex,
    IndexFileError,
    hub_commit,
    model_fingerprint,
    quantize_int8,
    storable,
)

# A window shorter than this at the end of a long file is dropped (unless it is the file's only one).
MIN_SEGMENT_SECONDS = 1.0


def find_audio(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}.")
    return files


def segment_spans(duration: float | None, seconds: float, overlap: float) -> list[tuple[float | None, float | None]]:
    """`(start, end)` windows of `seconds`, each starting `seconds - overlap` after the last; a file no longer than
    one window (or of unknown length) is one span `(None, None)`: the whole file."""
    if not seconds or duration is None or duration <= seconds:
        return [(None, None)]
    step, spans, start = seconds - overlap, [], 0.0
    while start < duration:
        end = min(start + seconds, duration)
        if end - start >= MIN_SEGMENT_SECONDS or not spans:
            spans.append((round(start, 3), round(end, 3)))
        if end >= duration:
            break
        start += step
    return spans


def check_segments(seconds: float | None, overlap: float) -> tuple[float, float]:
    if seconds is None or seconds == 0:
        if overlap:
            raise ValueError("--segment_overlap needs --segment_seconds.")
        return 0.0, 0.0
    if seconds < MIN_SEGMENT_SECONDS or seconds > 30:
        raise ValueError(f"--segment_seconds must be between {MIN_SEGMENT_SECONDS:g} and 30 (one Whisper window), "
                         f"got {seconds:g}.")  # fmt: skip
    if not 0 <= overlap < seconds:
        raise ValueError(f"--segment_overlap must be at least 0 and less than --segment_seconds, got {overlap:g}.")
    return float(seconds), float(overlap)


def build_index(
    folder,
    model: str,
    out,
    dim: int | None = None,
    int8: bool = False,
    batch_size: int = 16,
    chunk: int = 1024,
    inference_precision: str | None = None,
    accelerator=None,
    progress: bool = True,
    trust_remote_code: bool = False,
    device: str | None = None,
    num_workers: int | None = None,
    segment_seconds: float | None = None,
    segment_overlap: float = 0.0,
    ann_threshold: int = DEFAULT_THRESHOLD,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Sync the index at `out` with the audio files under `folder`: embed new and changed files (on `device`, with
    `num_workers` decoding workers), remove those that are gone. Returns counts and failures. `shard=(rank, world)`
    keeps only this shard's files (a stable hash of the path picks the shard), for one index file per process."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from pipeline_wavlink import iter_audio_embeddings

    from ..loading import load_model_and_processor, resolve_device

    check_positive_size("--batch_size", batch_size)
    check_positive_size("--chunk", chunk)
    if num_workers is not None:
        check_worker_count("--num_workers", num_workers)
    segment = check_segments(segment_seconds, segment_overlap)
    target_device = resolve_device(device, accelerator)  # before anything loads: a wrong --device fails at once
    is_main = accelerator is None or accelerator.is_main_process
    files = find_audio(folder)
    if shard is not None:
        files = [f for f in files if shard_of(str(f.resolve()), shard[1]) == shard[0]]
    # A Hub id is pinned to the commit it is loaded at: a later push to the repo does not change what the index means.
    revision = None if Path(model).exists() else hub_commit(model)
    wavlink, processor = load_model_and_processor(model, trust_remote_code=trust_remote_code, revision=revision)
    try:
        dim = check_matryoshka_dim(dim, wavlink.config)
    except ValueError as error:
        raise ValueError(f"--dim: {error}") from None
    wavlink.to(target_device)
    fingerprint = model_fingerprint(wavlink) if is_main else None  # only the main process writes the index
    model_ref = str(Path(model).resolve()) if Path(model).exists() else model  # searchable from any folder
    index = AudioIndex.create(out, model_ref, dim, int8, fingerprint, revision, segment) if is_main else None
    if accelerator is not None:
        accelerator.wait_for_everyone()
        index = index or AudioIndex.open(out)
    known = index.known()
    on_disk, todo = set(), []
    for file in files:
        stat, key = file.stat(), str(file.resolve())
        on_disk.add(key)
        if known.get(key) != (stat.st_size, stat.st_mtime):
            todo.append((key, stat.st_size, stat.st_mtime))
    root = str(Path(folder).resolve()) + os.sep
    gone = sorted(p for p in known if p.startswith(root) and p not in on_disk)  # deleted or renamed
    if is_main:
        index.remove(gone)
    failures, embedded = [], set()
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    bar = tqdm(total=len(todo), desc="indexing", disable=not (progress and is_main))
    for start in range(0, len(todo), chunk * world):
        mine = todo[start : start + chunk * world][rank::world]
        part = _embed_chunk(mine, segment, wavlink, processor, dim, batch_size, num_workers, inference_precision,
                            iter_audio_embeddings)  # fmt: skip
        gathered = gather_object([part]) if accelerator is not None else [part]
        if is_main:
            for file_rows, spans, vectors, bad in gathered:
                if file_rows:
                    index.add(file_rows, np.asarray(vectors).reshape(len(spans), dim), spans)
                    embedded.update(row[0] for row in file_rows)
                failures.extend(bad)
            bar.update(sum(len(rows) + len(bad) for rows, _, _, bad in gathered))
    bar.close()
    report = {
        "files": len(files),
        "index": str(out),
        "added": len(embedded - set(known)),
        "updated": len(embedded & set(known)),
        "removed": len(gone),
        "unchanged": len(files) - len(todo),
        "failures": failures,
        "total_in_index": len(index) if is_main else None,
    }
    if is_main and index.num_vectors() >= ann_threshold:
        up_to_date(out, index, index.load_vectors())  # the ANN graph follows the catalogue it was built from
    return report


def _embed_chunk(mine, segment, wavlink, processor, dim, batch_size, num_workers, inference_precision, loop):
    """Embed one chunk of files (each whole, or window by window). Returns `(file rows, spans, vectors,
    failures)`; a file is stored only when every one of its windows embedded."""
    items, ranges, durations = [], [], []  # a file's items are consecutive: ranges[i] are file i's
    for key, _, _ in mine:
        duration = audio_duration(key) if segment[0] else None  # the header, read once per file
        first = len(items)
        for start, end in segment_spans(duration, *segment):
            items.append(key if start is None else {"path": key, "start": start, "end": end})
        ranges.append(range(first, len(items)))
        durations.append(duration)
    vectors = np.zeros((len(items), dim), np.float32)
    seconds = np.zeros(len(items))
    ok = np.zeros(len(items), bool)
    bad = []
    for batch in loop(wavlink, processor, items, dim, batch_size, num_workers=num_workers,
                      inference_precision=inference_precision, on_error="skip", label="file {}"):  # fmt: skip
        bad += batch.failures
        if not len(batch.indices):
            continue
        good = storable(batch.embeds)
        bad += [f"{_name(items[i])}: its embedding is not finite and unit-norm" for i in batch.indices[~good]]
        vectors[batch.indices[good]] = batch.embeds[good]
        seconds[batch.indices] = batch.seconds
        ok[batch.indices[good]] = True
    file_rows, spans, kept = [], [], []
    for (key, size, mtime), rows, duration in zip(mine, ranges, durations):
        if not ok[rows].all():
            continue
        whole = isinstance(items[rows[0]], str)
        duration = float(seconds[rows[0]]) if whole else float(duration)
        file_rows.append((key, size, mtime, duration))
        for row in rows:
            item = items[row]
            spans.append((key, 0.0, duration) if whole else (key, float(item["start"]), float(item["end"])))
            kept.append(row)
    return file_rows, spans, vectors[kept], bad


def _name(item) -> str:
    return item if isinstance(item, str) else f"{item['path']} ({item['start']:g}-{item['end']:g} s)"


# ------------------------------------------------------------------------------------------------ shards


def shard_of(path: str, world: int) -> int:
    """The shard a file belongs to: stable across runs and machines, so re-indexing finds it where it was."""
    return int.from_bytes(hashlib.sha1(path.encode()).digest()[:8], "big") % world


def shard_path(out, rank: int, world: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.shard-{rank:05d}-of-{world:05d}")


SHARD_KEYS = ("model", "model_fingerprint", "dim", "quantization", "segment_seconds", "segment_overlap")


def merge_shards(shards, out) -> dict:
    """Join shard files (written by `wavlink-index --shards`) into one new index at `out`. The shards must share the
    model fingerprint, dim, quantization and segments. Written to a temporary file and renamed into place: the merged
    index is whole or absent. Returns counts."""
    shards = [Path(s) for s in shards]
    if not shards:
        raise ValueError("no shard files given.")
    opened = [AudioIndex.open(s) for s in shards]
    first = opened[0].meta
    for shard, index in zip(shards[1:], opened[1:]):
        differing = [k for k in SHARD_KEYS if index.meta.get(k) != first.get(k)]
        if differing:
            raise IndexFileError(f"{shard} differs from {shards[0]} in {', '.join(differing)}; shards of one index "
                                 "share the model and settings.")  # fmt: skip
    out = Path(out)
    handle, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(handle)
    partial = Path(name)
    partial.unlink()
    try:
        segment = (float(first["segment_seconds"]), float(first["segment_overlap"]))
        merged = AudioIndex.create(partial, first["model"], int(first["dim"]), first["quantization"] == "int8",
                                   first["model_fingerprint"], first.get("model_revision"), segment)  # fmt: skip
        for shard in shards:
            with merged.db:
                merged.db.execute("ATTACH DATABASE ? AS shard", (str(shard),))
            with merged.db:
                # a file in two shards (the world size changed between runs): the newer copy wins
                merged.db.execute(
                    "DELETE FROM vectors WHERE path IN (SELECT f.path FROM files f JOIN shard.files s ON "
                    "s.path = f.path WHERE s.mtime >= f.mtime)"
                )
                merged.db.execute(
                    "DELETE FROM files WHERE path IN (SELECT f.path FROM files f JOIN shard.files s ON "
                    "s.path = f.path WHERE s.mtime >= f.mtime)"
                )
                merged.db.execute("INSERT OR IGNORE INTO files SELECT * FROM shard.files")
                merged.db.execute(
                    "INSERT INTO vectors (path, start, end, embedding, scale) SELECT v.path, v.start, v.end, "
                    "v.embedding, v.scale FROM shard.vectors v WHERE v.path IN (SELECT path FROM files) AND NOT "
                    "EXISTS (SELECT 1 FROM vectors w WHERE w.path = v.path) ORDER BY v.id"
                )
                merged._bump(removal=True)
            merged.db.execute("DETACH DATABASE shard")
        counts = {"shards": len(shards), "files": len(merged),
                  "vectors": merged.num_vectors()}  # fmt: skip
        merged.db.close()
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return {**counts, "index": str(out)}


# ------------------------------------------------------------------------------------------------ search


def search_once(
    index_path,
    query: str | None = None,
    audio: str | None = None,
    k: int = 5,
    model: str | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
    per_file: bool = False,
) -> tuple[WavLinkIndex, list[Hit]]:
    """Open the index and answer one text or audio query (what `wavlink-search` does; open a `WavLinkIndex`
    yourself to ask many)."""
    if (query is None) == (audio is None):
        raise ValueError("give a text query or --audio FILE (one of them).")
    check_positive_size("-k", k)
    index = WavLinkIndex.open(index_path, model=model, device=device, trust_remote_code=trust_remote_code)
    request = {"text": query} if audio is None else {"audio": audio}
    return index, index.search(**request, k=k, per_file=per_file)


def search(index_path, query=None, audio=None, k: int = 5, **options) -> list[tuple[float, str, float]]:
    """Top-`k` `(score, path, duration)` for a text or an audio query (cosine similarity); `options` as
    `search_once`."""
    return [(hit.score, hit.path, hit.duration) for hit in search_once(index_path, query, audio, k, **options)[1]]


# ------------------------------------------------------------------------------------------------ commands


def index_main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="wavlink-index",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("folder", help="folder to index, recursively (" + ", ".join(AUDIO_SUFFIXES) + ")")
    parser.add_argument("--model", required=True, help="saved WavLink folder or Hub id")
    parser.add_argument("--out", required=True, help="index file to create or update")
    parser.add_argument("--dim", type=int, default=None, help="Matryoshka size to store (default: full width)")
    parser.add_argument(
        "--int8", action="store_true", help="store int8 embeddings with a per-vector scale (4x smaller)"
    )
    parser.add_argument("--batch_size", type=int, default=16, help="clips per forward pass")
    parser.add_argument(
        "--chunk", type=int, default=1024, help="files embedded and committed together (one transaction)"
    )
    parser.add_argument("--segment_seconds", type=float, default=None,
                        help="index files longer than this as windows of this many seconds (default: one vector "
                        "per file)")  # fmt: skip
    parser.add_argument("--segment_overlap", type=float, default=0.0, help="seconds shared by consecutive windows")
    parser.add_argument("--ann_threshold", type=int, default=DEFAULT_THRESHOLD,
                        help="build the approximate (FAISS HNSW) graph from this many vectors on")  # fmt: skip
    parser.add_argument(
        "--shards",
        action="store_true",
        help="under accelerate launch: each process writes its own shard file, OUT.shard-R-of-N (no two writers on "
        "one file, across machines on shared storage); join them with wavlink-index merge",
    )
    parser.add_argument(
        "--inference_precision", choices=("fp32", "bf16"), default=None, help="bf16: bfloat16 autocast while embedding"
    )
    parser.add_argument("--no_progress", action="store_true")
    add_trust_remote_code_argument(parser)
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    from accelerate import Accelerator

    accelerator = Accelerator()
    sharded = args.shards and accelerator.num_processes > 1
    rank, world = accelerator.process_index, accelerator.num_processes
    try:
        report = build_index(
            args.folder,
            args.model,
            shard_path(args.out, rank, world) if sharded else args.out,
            args.dim,
            args.int8,
            args.batch_size,
            chunk=args.chunk,
            inference_precision=args.inference_precision,
            accelerator=accelerator if accelerator.num_processes > 1 and not sharded else None,
            progress=not args.no_progress and accelerator.is_main_process,
            trust_remote_code=args.trust_remote_code,
            device=str(accelerator.device) if sharded else args.device,
            shard=(rank, world) if sharded else None,
            num_workers=args.num_workers,
            segment_seconds=args.segment_seconds,
            segment_overlap=args.segment_overlap,
            ann_threshold=args.ann_threshold,
        )
        # Every process finishes together and leaves the process group cleanly: a process that exits while gloo's
        # threads still run aborts ("terminate called without an active exception") and fails the launch.
        accelerator.wait_for_everyone()
    except (ValueError, OSError, sqlite3.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        accelerator.end_training()
    if accelerator.is_main_process or sharded:
        print(
            f"{report['files']} audio files: {report['added']} added, {report['updated']} updated, "
            f"{report['removed']} removed, {report['unchanged']} unchanged, {len(report['failures'])} unreadable; "
            f"{report['total_in_index']} in {report['index']}"
        )
        for failure in report["failures"]:
            print(f"  skipped: {failure}")
    return 0


def merge_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wavlink-index merge", description="Join shard files into one index.")
    parser.add_argument("shards", nargs="+", help="shard files written by wavlink-index --shards")
    parser.add_argument("--out", required=True, help="the merged index file (replaced whole)")
    args = parser.parse_args(argv)
    try:
        counts = merge_shards(args.shards, args.out)
    except (ValueError, OSError, sqlite3.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{counts['shards']} shards: {counts['files']} files, {counts['vectors']} vectors in {counts['index']}")
    return 0


def search_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wavlink-search", description="Search a WavLink index with text or audio.")
    parser.add_argument("index", help="index file written by wavlink-index")
    parser.add_argument("query", nargs="?", default=None, help="text query")
    parser.add_argument("--audio", default=None, help="audio file to use as the query instead of text")
    parser.add_argument("-k", type=int, default=5, help="number of results")
    parser.add_argument("--per_file", action="store_true", help="segment indexes: each file's best window only")
    parser.add_argument(
        "--json", action="store_true", help="print the hits as JSON (path, score, start, end, duration)"
    )
    parser.add_argument("--model", default=None, help="override the model recorded in the index")
    parser.add_argument("--no_progress", action="store_true", help="accepted for scripts; search shows no progress bar")
    add_trust_remote_code_argument(parser)
    add_device_arguments(parser, workers=False)
    args = parser.parse_args(argv)
    try:
        index, hits = search_once(args.index, args.query, args.audio, args.k, args.model, args.trust_remote_code,
                                  args.device, args.per_file)  # fmt: skip
    except (ValueError, OSError, sqlite3.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([hit.as_dict() for hit in hits], indent=2))
        return 0
    segments = index.catalogue.segment[0] > 0
    width = max(len(os.path.basename(hit.path)) for hit in hits)
    for rank, hit in enumerate(hits, 1):
        span = f"{hit.start:7.1f}-{hit.end:<7.1f}s" if segments else f"{hit.duration:6.2f}s"
        print(f"{rank:>3}  {hit.score:+.4f}  {span}  {os.path.basename(hit.path):<{width}}  {hit.path}")
    return 0


__all__ = [
    "AudioIndex", "Hit", "IndexFileError", "WavLinkIndex", "build_index", "find_audio", "merge_shards",
    "model_fingerprint", "quantize_int8", "search", "segment_spans",
]  # fmt: skip

if __name__ == "__main__":
    sys.exit(index_main())
