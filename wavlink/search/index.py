"""Embed a folder of audio into one index file, and search it with text or audio.

    wavlink-index ./my_sounds --model me/wavlink-base --out sounds.index --dim 128 [--int8]
    wavlink-search sounds.index "a dog barking far away" -k 5
    wavlink-search sounds.index --audio query.wav -k 5
    wavlink-index ./my_sounds ... --device cuda:1 --num_workers 12   # default: CUDA if available, workers per core
    accelerate launch -m wavlink.search ./big_collection --model ... --out big.index   # several GPUs

The index is one SQLite file: the model it was built with (its path or Hub id and a fingerprint of its weights and
config), the settings, and per file its path, size, mtime, duration and embedding (float32, or int8 with a
per-vector scale). Files are embedded in chunks (`--chunk`, 1024 by default; decoded by DataLoader workers while
the model runs), and each chunk is committed as one
transaction, so an interrupted run keeps every chunk written before it; re-indexing skips files whose path, size and
mtime are unchanged. Unreadable files are reported and skipped. Only finite, unit-norm embeddings are stored. An
index refuses to be searched or extended with a model whose fingerprint differs from the one it was built with.
"""

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from configuration_wavlink import check_matryoshka_dim, check_positive_size, check_worker_count
from processing_wavlink import AUDIO_SUFFIXES

from ..loading import add_device_arguments, add_trust_remote_code_argument

FORMAT_VERSION = "2"  # 2: the model fingerprint is recorded


def model_fingerprint(model) -> str:
    """SHA-256 of the model's config and of every weight (name, dtype, shape, bytes): two models embed alike only if
    their fingerprints are equal. A LoRA run is fingerprinted as loaded (base plus adapter)."""
    import torch

    digest = hashlib.sha256()
    config = model.config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "auto_map", "custom_pipelines", "architectures"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def hub_commit(repo_id: str) -> str | None:
    """The commit a Hub repo's main branch is at now, or None where the Hub cannot be asked (offline)."""
    from huggingface_hub import model_info

    try:
        return model_info(repo_id).sha
    except Exception as error:  # offline mode, no network, no such repo: the load that follows reports the latter
        print(
            f"warning: cannot resolve the commit of {repo_id!r} ({type(error).__name__}); not pinned.", file=sys.stderr
        )
        return None


def storable(vectors: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows that are finite and unit-norm (to 1e-3): only those may be stored."""
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], vectors, 0), axis=1)
    return finite & (np.abs(norms - 1) < 1e-3)


class IndexFileError(ValueError):
    """A missing, corrupt or mismatched index file."""


# ------------------------------------------------------------------------------------------------ storage


def quantize_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-vector int8: `vectors ~= codes * scales[:, None]`."""
    scales = np.abs(vectors).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales.astype(np.float32)


class AudioIndex:
    """An index file (see the module docstring). Open with `AudioIndex.create` or `AudioIndex.open`."""

    def __init__(self, path: Path, connection: sqlite3.Connection, meta: dict):
        self.path, self.db, self.meta = path, connection, meta

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def int8(self) -> bool:
        return self.meta["quantization"] == "int8"

    @classmethod
    def open(cls, path) -> "AudioIndex":
        path = Path(path)
        if not path.is_file():
            raise IndexFileError(f"index {path} does not exist.")
        try:
            db = sqlite3.connect(path)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            db.execute("SELECT count(*) FROM items").fetchone()
        except sqlite3.DatabaseError as error:
            raise IndexFileError(f"{path} is not a WavLink index or is corrupt ({error}).") from None
        if meta.get("format") != "wavlink-index" or "dim" not in meta:
            raise IndexFileError(f"{path} is not a WavLink index (no WavLink metadata).")
        return cls(path, db, meta)

    @classmethod
    def create(
        cls, path, model: str, dim: int, int8: bool, fingerprint: str, revision: str | None = None
    ) -> "AudioIndex":
        """Open the index at `path` for adding, or create it. An existing index must have been built with the same
        model weights (`fingerprint`), dim and quantization. Creation is atomic: the tables and metadata are written
        to a temporary file that is then linked into place, so a crash leaves no half-made index, and of two
        processes creating one index at once, one creates it and the other opens it."""
        path = Path(path)
        wanted = {"dim": str(dim), "quantization": "int8" if int8 else "float32"}
        if not path.exists():
            fields = {**wanted, "model": model, "model_fingerprint": fingerprint}
            cls._create_atomically(path, {**fields, "model_revision": revision} if revision else fields)
        index = cls.open(path)
        clash = {k: (index.meta.get(k), v) for k, v in wanted.items() if index.meta.get(k) != v}
        if clash:
            details = ", ".join(f"{k} {old!r} (asked {new!r})" for k, (old, new) in clash.items())
            raise IndexFileError(f"{path} was built with {details}; write to a new index file.")
        index.check_model(fingerprint, model, "add to")
        return index

    @staticmethod
    def _create_atomically(path: Path, fields: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        partial = Path(name)
        try:
            db = sqlite3.connect(partial)
            with db:
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
                db.execute(
                    "CREATE TABLE items (path TEXT PRIMARY KEY, size INTEGER, mtime REAL, duration REAL, "
                    "embedding BLOB, scale REAL)"
                )
                meta = {"format": "wavlink-index", "version": FORMAT_VERSION, **fields,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
                db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            db.close()
            try:
                os.link(partial, path)  # atomic, and never replaces an index another process made meanwhile
            except FileExistsError:
                pass
        finally:
            partial.unlink(missing_ok=True)

    def check_model(self, fingerprint: str, model: str, action: str) -> None:
        """Refuse a model whose weights differ from the ones this index was built with."""
        recorded = self.meta.get("model_fingerprint")
        if recorded is None:
            raise IndexFileError(
                f"{self.path} was written by an older wavlink-index that did not record the model's fingerprint, so "
                f"it cannot be checked against {model!r}; rebuild it with wavlink-index --out NEW_FILE."
            )
        if recorded != fingerprint:
            raise IndexFileError(
                f"cannot {action} {self.path} with {model!r}: its weights differ from those of the model the index was "
                f"built with ({self.meta.get('model')!r}, fingerprint {recorded[:12]}, this one {fingerprint[:12]}). "
                "Rebuild the index with this model (wavlink-index --out NEW_FILE), or pass --model with the same "
                "weights."
            )

    def known(self) -> dict[str, tuple[int, float]]:
        return {p: (s, m) for p, s, m in self.db.execute("SELECT path, size, mtime FROM items")}

    def add(self, rows: list[tuple[str, int, float, float]], vectors: np.ndarray) -> None:
        """Insert or replace a batch in one transaction (all or nothing). Every vector must be finite and
        unit-norm."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(rows), self.dim):
            raise ValueError(
                f"{len(rows)} rows but embeddings of shape {vectors.shape}; expected ({len(rows)}, {self.dim})."
            )
        bad = np.flatnonzero(~storable(vectors))
        if len(bad):
            raise ValueError(f"refusing to store {len(bad)} embedding(s) that are not finite and unit-norm, "
                             f"e.g. for {rows[bad[0]][0]}.")  # fmt: skip
        if self.int8:
            codes, scales = quantize_int8(vectors)
            blobs = [c.tobytes() for c in codes]
        else:
            blobs, scales = [v.astype(np.float32).tobytes() for v in vectors], np.ones(len(rows), dtype=np.float32)
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?)",
                [(*row, blob, float(scale)) for row, blob, scale in zip(rows, blobs, scales)],
            )

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM items").fetchone()[0]

    def load(self, progress: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
        """All paths, durations and the `(n, dim)` float32 embedding matrix (int8 dequantised)."""
        from tqdm.auto import tqdm

        paths, durations, blobs, scales = [], [], [], []
        total = len(self)
        cursor = self.db.execute("SELECT path, duration, embedding, scale FROM items ORDER BY rowid")
        with tqdm(total=total, desc="loading index", disable=not progress or total < 50_000, leave=False) as bar:
            while rows := cursor.fetchmany(10_000):
                for path, duration, blob, scale in rows:
                    paths.append(path)
                    durations.append(duration)
                    blobs.append(blob)
                    scales.append(scale)
                bar.update(len(rows))
        dtype = np.int8 if self.int8 else np.float32
        if any(len(b) != self.dim * np.dtype(dtype).itemsize for b in blobs):
            raise IndexFileError(
                f"{self.path} is corrupt: an embedding does not have {self.dim} {dtype.__name__} values."
            )
        matrix = np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), self.dim).astype(np.float32)
        if self.int8:
            matrix *= np.asarray(scales, dtype=np.float32)[:, None]
        return paths, np.asarray(durations), matrix


# ------------------------------------------------------------------------------------------------ indexing


def find_audio(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}.")
    return files


def build_index(
    folder,
    model: str,
    out,
    dim: int | None = None,
    int8: bool = False,
    batch_size: int = 16,
    chunk: int = 64,
    inference_precision: str | None = None,
    accelerator=None,
    progress: bool = True,
    trust_remote_code: bool = False,
    device: str | None = None,
    num_workers: int | None = None,
) -> dict:
    """Embed every new or changed audio file under `folder` into the index at `out` (on `device`, default CUDA when
    available, with `num_workers` decoding workers). Returns counts and failures."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from pipeline_wavlink import iter_audio_embeddings

    from ..loading import load_model_and_processor, resolve_device

    check_positive_size("--batch_size", batch_size)
    check_positive_size("--chunk", chunk)
    if num_workers is not None:
        check_worker_count("--num_workers", num_workers)
    target_device = resolve_device(device, accelerator)  # before anything loads: a wrong --device fails at once
    is_main = accelerator is None or accelerator.is_main_process
    files = find_audio(folder)
    # A Hub id is pinned to the commit it is loaded at: a later push to the repo does not change what the index means.
    revision = None if Path(model).exists() else hub_commit(model)
    wavlink, processor = load_model_and_processor(model, trust_remote_code=trust_remote_code, revision=revision)
    try:
        dim = check_matryoshka_dim(dim, wavlink.config)
    except ValueError as error:
        raise ValueError(f"--dim: {error}") from None
    fingerprint = model_fingerprint(wavlink) if is_main else None  # only the main process writes the index
    wavlink.to(target_device)
    model_ref = str(Path(model).resolve()) if Path(model).exists() else model  # searchable from any folder
    index = AudioIndex.create(out, model_ref, dim, int8, fingerprint, revision) if is_main else None
    if accelerator is not None:
        accelerator.wait_for_everyone()
        index = index or AudioIndex.open(out)
    known = index.known()
    todo = []
    for file in files:
        stat = file.stat()
        key = str(file.resolve())
        if known.get(key) != (stat.st_size, stat.st_mtime):
            todo.append((key, stat.st_size, stat.st_mtime))
    failures, added = [], 0
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    bar = tqdm(total=len(todo), desc="indexing", disable=not (progress and is_main))
    for start in range(0, len(todo), chunk * world):
        mine = todo[start : start + chunk * world][rank::world]
        rows, vectors, bad = [], [], []
        for batch in iter_audio_embeddings(
            wavlink, processor, [key for key, _, _ in mine], dim, batch_size, num_workers=num_workers,
            inference_precision=inference_precision, on_error="skip", label="file {}",
        ):  # fmt: skip
            bad += batch.failures
            if not len(batch.indices):
                continue
            good = storable(batch.embeds)
            bad += [f"{mine[i][0]}: its embedding is not finite and unit-norm" for i in batch.indices[~good]]
            rows += [(*mine[i], float(seconds)) for i, seconds in zip(batch.indices[good], batch.seconds[good])]
            vectors.append(batch.embeds[good])
        vectors = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
        gathered = gather_object([(rows, vectors, bad)]) if accelerator is not None else [(rows, vectors, bad)]
        if is_main:
            for part_rows, part_vectors, part_bad in gathered:
                if part_rows:
                    index.add(part_rows, np.asarray(part_vectors))
                    added += len(part_rows)
                failures.extend(part_bad)
            bar.update(sum(len(r) + len(b) for r, _, b in gathered))
    bar.close()
    return {
        "files": len(files),
        "skipped_unchanged": len(files) - len(todo),
        "added": added,
        "failures": failures,
        "total_in_index": len(index) if is_main else None,
    }


# ------------------------------------------------------------------------------------------------ search


def search(
    index_path,
    query: str | None = None,
    audio: str | None = None,
    k: int = 5,
    model: str | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    device: str | None = None,
) -> list[tuple[float, str, float]]:
    """Top-`k` `(score, path, duration)` for a text or an audio query (cosine similarity), the query embedded on
    `device` (default CUDA when available)."""
    from pipeline_wavlink import WavLinkEmbeddingPipeline

    from ..loading import load_model_and_processor, resolve_device

    if (query is None) == (audio is None):
        raise ValueError("give a text query or --audio FILE (one of them).")
    check_positive_size("-k", k)
    index = AudioIndex.open(index_path)
    paths, durations, matrix = index.load(progress=progress)
    if not paths:
        raise ValueError(f"index {index_path} is empty.")
    # The model the index names is loaded at the Hub commit it was built with; --model is taken as given.
    revision = None if model else index.meta.get("model_revision")
    model = model or index.meta["model"]
    wavlink, processor = load_model_and_processor(model, trust_remote_code=trust_remote_code, revision=revision)
    index.check_model(model_fingerprint(wavlink), model, "search")
    embed = WavLinkEmbeddingPipeline(model=wavlink, processor=processor, device=resolve_device(device))
    vector = embed(audio=audio, dim=index.dim) if audio is not None else embed(text=query, dim=index.dim)
    norms = np.linalg.norm(matrix, axis=1)
    scores = matrix @ vector / np.where(norms == 0, 1, norms)
    top = np.argsort(-scores, kind="stable")[:k]
    return [(float(scores[i]), paths[i], float(durations[i])) for i in top]


# ------------------------------------------------------------------------------------------------ commands


def index_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="wavlink-index",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("folder", help="folder to index, recursively (wav, flac, ogg, mp3)")
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
    parser.add_argument(
        "--inference_precision", choices=("fp32", "bf16"), default=None, help="bf16: bfloat16 autocast while embedding"
    )
    parser.add_argument("--no_progress", action="store_true")
    add_trust_remote_code_argument(parser)
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    from accelerate import Accelerator

    accelerator = Accelerator()
    try:
        report = build_index(
            args.folder,
            args.model,
            args.out,
            args.dim,
            args.int8,
            args.batch_size,
            chunk=args.chunk,
            inference_precision=args.inference_precision,
            accelerator=accelerator if accelerator.num_processes > 1 else None,
            progress=not args.no_progress,
            trust_remote_code=args.trust_remote_code,
            device=args.device,
            num_workers=args.num_workers,
        )
        # Every process finishes together and leaves the process group cleanly: a process that exits while gloo's
        # threads still run aborts ("terminate called without an active exception") and fails the launch.
        accelerator.wait_for_everyone()
    except (ValueError, OSError, sqlite3.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        accelerator.end_training()
    if accelerator.is_main_process:
        print(
            f"{report['files']} audio files: {report['added']} embedded, {report['skipped_unchanged']} unchanged, "
            f"{len(report['failures'])} unreadable; {report['total_in_index']} in {args.out}"
        )
        for failure in report["failures"]:
            print(f"  skipped: {failure}")
    return 0


def search_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wavlink-search", description="Search a WavLink index with text or audio.")
    parser.add_argument("index", help="index file written by wavlink-index")
    parser.add_argument("query", nargs="?", default=None, help="text query")
    parser.add_argument("--audio", default=None, help="audio file to use as the query instead of text")
    parser.add_argument("-k", type=int, default=5, help="number of results")
    parser.add_argument("--model", default=None, help="override the model recorded in the index")
    parser.add_argument("--no_progress", action="store_true")
    add_trust_remote_code_argument(parser)
    add_device_arguments(parser, workers=False)
    args = parser.parse_args(argv)
    try:
        results = search(
            args.index, args.query, args.audio, args.k, args.model, progress=not args.no_progress,
            trust_remote_code=args.trust_remote_code, device=args.device,
        )  # fmt: skip
    except (ValueError, OSError, sqlite3.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    width = max(len(os.path.basename(p)) for _, p, _ in results)
    for rank, (score, path, duration) in enumerate(results, 1):
        print(f"{rank:>3}  {score:+.4f}  {duration:6.2f}s  {os.path.basename(path):<{width}}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(index_main())
