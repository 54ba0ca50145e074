"""The index file: one SQLite catalogue of files and their embeddings.

Tables: `meta` (format, model path or Hub id and commit, weight fingerprint, dim, quantization, segment settings, and
`catalogue_version`, raised by every write), `files` (path, size, mtime, duration) and `vectors` (id, path, start and
end in seconds, embedding as float32 or int8 with a per-vector scale). A file has one vector, or one per window when
the index is built with segments. Every write is one transaction, so an interrupted run keeps what it committed.
Version 2 files (one `items` table) are migrated in place when opened.
"""

import hashlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = "3"  # 2: the model fingerprint is recorded; 3: files and vectors apart (segments), catalogue version


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

    @property
    def segment(self) -> tuple[float, float]:
        """(window seconds, overlap seconds); (0, 0) when every file is one vector."""
        return float(self.meta.get("segment_seconds", 0)), float(self.meta.get("segment_overlap", 0))

    @property
    def version(self) -> int:
        return int(self.meta.get("catalogue_version", 0))

    @classmethod
    def open(cls, path) -> "AudioIndex":
        path = Path(path)
        if not path.is_file():
            raise IndexFileError(f"index {path} does not exist.")
        try:
            db = sqlite3.connect(path)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") == "wavlink-index" and meta.get("version") == "2":
                _migrate_from_2(db)
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            db.execute("SELECT count(*) FROM files").fetchone()
            db.execute("SELECT count(*) FROM vectors").fetchone()
        except sqlite3.DatabaseError as error:
            raise IndexFileError(f"{path} is not a WavLink index or is corrupt ({error}).") from None
        if meta.get("format") != "wavlink-index" or "dim" not in meta:
            raise IndexFileError(f"{path} is not a WavLink index (no WavLink metadata).")
        return cls(path, db, meta)

    @classmethod
    def create(
        cls, path, model: str, dim: int, int8: bool, fingerprint: str, revision: str | None = None,
        segment: tuple[float, float] = (0.0, 0.0),
    ) -> "AudioIndex":  # fmt: skip
        """Open the index at `path` for adding, or create it. An existing index must have been built with the same
        model weights (`fingerprint`), dim, quantization and segments. Creation is atomic: the tables and metadata
        are written to a temporary file that is then linked into place, so a crash leaves no half-made index, and of
        two processes creating one index at once, one creates it and the other opens it."""
        path = Path(path)
        wanted = {"dim": str(dim), "quantization": "int8" if int8 else "float32",
                  "segment_seconds": str(float(segment[0])), "segment_overlap": str(float(segment[1]))}  # fmt: skip
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
                _create_tables(db)
                meta = {"format": "wavlink-index", "version": FORMAT_VERSION, "catalogue_version": "0",
                        "last_removal_version": "0", **fields,
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
        return {p: (s, m) for p, s, m in self.db.execute("SELECT path, size, mtime FROM files")}

    def add(self, files: list[tuple[str, int, float, float]], vectors: np.ndarray, spans=None) -> None:
        """Insert or replace files and their vectors in one transaction (all or nothing). `files` rows are `(path,
        size, mtime, duration)`; `spans` (default: one whole-file vector per file, in order) are `(path, start, end)`
        per vector. Every vector must be finite and unit-norm."""
        vectors = np.asarray(vectors, dtype=np.float32)
        spans = [(path, 0.0, duration) for path, _, _, duration in files] if spans is None else spans
        if vectors.shape != (len(spans), self.dim):
            raise ValueError(
                f"{len(spans)} vectors expected, of width {self.dim}, but embeddings have shape {vectors.shape}."
            )
        bad = np.flatnonzero(~storable(vectors))
        if len(bad):
            raise ValueError(f"refusing to store {len(bad)} embedding(s) that are not finite and unit-norm, "
                             f"e.g. for {spans[bad[0]][0]}.")  # fmt: skip
        if self.int8:
            codes, scales = quantize_int8(vectors)
            blobs = [c.tobytes() for c in codes]
        else:
            blobs, scales = [v.tobytes() for v in vectors], np.ones(len(spans), dtype=np.float32)
        with self.db:
            self.db.executemany("DELETE FROM vectors WHERE path = ?", [(row[0],) for row in files])
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", files)
            self.db.executemany(
                "INSERT INTO vectors (path, start, end, embedding, scale) VALUES (?, ?, ?, ?, ?)",
                [(*span, blob, float(scale)) for span, blob, scale in zip(spans, blobs, scales)],
            )
            self._bump()

    def remove(self, paths: list[str]) -> None:
        """Drop files and their vectors, in one transaction."""
        if not paths:
            return
        with self.db:
            self.db.executemany("DELETE FROM vectors WHERE path = ?", [(p,) for p in paths])
            self.db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])
            self._bump(removal=True)

    def _bump(self, removal: bool = False) -> None:
        """Raise the catalogue version (inside the caller's transaction): an ANN file built at an older version is
        stale; after a removal it must be rebuilt, not extended."""
        version = str(self.version + 1)
        self.db.execute("UPDATE meta SET value = ? WHERE key = 'catalogue_version'", (version,))
        self.meta["catalogue_version"] = version
        if removal:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('last_removal_version', ?)", (version,))
            self.meta["last_removal_version"] = version

    def __len__(self) -> int:
        """Files in the index."""
        return self.db.execute("SELECT count(*) FROM files").fetchone()[0]

    def num_vectors(self) -> int:
        return self.db.execute("SELECT count(*) FROM vectors").fetchone()[0]

    def load_vectors(self) -> "VectorTable":
        """Every vector as one contiguous array, in id order: float32, or int8 codes with their scales (int8 stays
        int8)."""
        rows = self.db.execute(
            "SELECT v.id, v.path, v.start, v.end, f.duration, v.embedding, v.scale FROM vectors v "
            "JOIN files f ON f.path = v.path ORDER BY v.id"
        ).fetchall()
        dtype = np.dtype(np.int8 if self.int8 else np.float32)
        if any(len(row[5]) != self.dim * dtype.itemsize for row in rows):
            raise IndexFileError(f"{self.path} is corrupt: an embedding does not have {self.dim} {dtype.name} values.")
        columns = list(zip(*rows)) if rows else [[]] * 7
        return VectorTable(
            ids=np.asarray(columns[0], dtype=np.int64),
            paths=list(columns[1]),
            starts=np.asarray(columns[2], dtype=np.float64),
            ends=np.asarray(columns[3], dtype=np.float64),
            durations=np.asarray(columns[4], dtype=np.float64),
            codes=np.frombuffer(b"".join(columns[5]), dtype=dtype).reshape(len(rows), self.dim),
            scales=np.asarray(columns[6], dtype=np.float32),
        )

    def load(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Paths, durations and the `(n, dim)` float32 embedding matrix (int8 dequantised), one row per vector."""
        table = self.load_vectors()
        return table.paths, table.durations, table.float32()


@dataclass
class VectorTable:
    """The index's vectors in memory: row `i` is vector `ids[i]` of file `paths[i]`, seconds `starts[i]`-`ends[i]`
    of a file lasting `durations[i]`; `codes` is `(n, dim)` float32, or int8 with `scales`."""

    ids: np.ndarray
    paths: list[str]
    starts: np.ndarray
    ends: np.ndarray
    durations: np.ndarray
    codes: np.ndarray
    scales: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def float32(self, rows=slice(None)) -> np.ndarray:
        block = self.codes[rows]
        if block.dtype == np.int8:
            return block.astype(np.float32) * self.scales[rows, None]
        return block


def _create_tables(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime REAL, duration REAL)")
    # AUTOINCREMENT: an id is never reused after a removal, so an ANN file keyed by ids cannot mix two vectors up
    db.execute(
        "CREATE TABLE vectors (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, start REAL, end REAL, "
        "embedding BLOB, scale REAL)"
    )
    db.execute("CREATE INDEX vectors_by_path ON vectors (path)")


def _migrate_from_2(db: sqlite3.Connection) -> None:
    """Version 2 (one `items` row per file) to 3, in one transaction."""
    with db:
        _create_tables(db)
        db.execute("INSERT INTO files SELECT path, size, mtime, duration FROM items")
        db.execute(
            "INSERT INTO vectors (path, start, end, embedding, scale) "
            "SELECT path, 0, duration, embedding, scale FROM items ORDER BY rowid"
        )
        db.execute("DROP TABLE items")
        new = {"version": FORMAT_VERSION, "catalogue_version": "1", "last_removal_version": "1",
               "segment_seconds": "0.0", "segment_overlap": "0.0"}  # fmt: skip
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", new.items())
