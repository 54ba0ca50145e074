"""Approximate nearest-neighbour search for large indexes: a FAISS HNSW graph kept beside the index file.

FAISS rather than usearch, measured on this project's 2-core CPU (200k clustered unit vectors, d=256, M=16,
efConstruction=128, efSearch=64): FAISS HNSW built in 52 s and answered in 0.20 ms at recall@10 1.000; usearch took
94 s (f32, same recall, 0.39 ms) or, with int8 codes, 39 s at recall 0.883. An int8 index uses FAISS's 8-bit scalar
quantizer inside the graph (`IndexHNSWSQ`), so int8 stays compact in the ANN too.

The graph lives in `<index>.ann` (vector ids are the catalogue's, via `IndexIDMap2`) with `<index>.ann.json` naming
the catalogue version it was built at. It is never trusted blindly: a missing, unreadable or corrupt file, or one
built at another catalogue version, is brought up to date from the catalogue: extended with the new vectors when
nothing was removed since, else rebuilt. Files are replaced atomically (temporary file, then rename), and the stamp
is written after the graph, so an interrupted update leaves a stamp that no longer matches, not a wrong graph.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np

# Exact search below this many vectors: it is fast there, and exact.
DEFAULT_THRESHOLD = 50_000
HNSW_M = 16
EF_CONSTRUCTION = 128
EF_SEARCH = 64


def ann_paths(index_path) -> tuple[Path, Path]:
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".ann"), index_path.with_name(index_path.name + ".ann.json")


class AnnIndex:
    """A FAISS HNSW graph over the catalogue's vectors; `search` returns catalogue ids and cosine scores."""

    def __init__(self, faiss_index, stamp: dict):
        self.index, self.stamp = faiss_index, stamp

    @staticmethod
    def _new(dim: int, int8: bool):
        import faiss

        inner = (
            faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            if int8
            else faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        )
        inner.hnsw.efConstruction = EF_CONSTRUCTION
        inner.hnsw.efSearch = EF_SEARCH
        return faiss.IndexIDMap2(inner)

    @classmethod
    def build(cls, table, int8: bool, version: int) -> "AnnIndex":
        """A new graph over every vector of `table` (a `VectorTable`), stamped with the catalogue `version`."""
        import faiss

        index = cls._new(table.codes.shape[1], int8)
        vectors = _unit(table.float32())
        if int8:
            faiss.downcast_index(index.index).train(vectors)
        index.add_with_ids(vectors, table.ids)
        return cls(index, _stamp(version, table, int8))

    def extend(self, table, version: int) -> "AnnIndex":
        """Add the vectors of `table` newer than the graph's (only valid when nothing was removed since)."""
        new = table.ids > self.stamp["max_id"]
        if new.any():
            self.index.add_with_ids(_unit(table.float32(new)), table.ids[new])
        self.stamp = _stamp(version, table, self.stamp["int8"])
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`(scores, ids)`, each `(len(queries), k)`; id -1 where fewer than `k` were found."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self, index_path) -> None:
        import faiss

        graph_path, stamp_path = ann_paths(index_path)
        _atomic_write(graph_path, lambda name: faiss.write_index(self.index, name))
        _atomic_write(stamp_path, lambda name: Path(name).write_text(json.dumps(self.stamp)))

    @classmethod
    def load(cls, index_path) -> "AnnIndex | None":
        """The saved graph, or None when there is none or it cannot be read."""
        import faiss

        graph_path, stamp_path = ann_paths(index_path)
        try:
            stamp = json.loads(stamp_path.read_text())
            graph = faiss.read_index(str(graph_path))
        except Exception:  # missing, truncated or corrupt: rebuilt by the caller
            return None
        if graph.ntotal != stamp.get("count"):
            return None
        return cls(graph, stamp)


def up_to_date(index_path, catalogue, table, writable: bool = True) -> AnnIndex:
    """The ANN graph of `catalogue` (an `AudioIndex`) at its current version: loaded if current, extended if only
    additions happened since it was built, else rebuilt; saved back when `writable`."""
    ann, version = AnnIndex.load(index_path), catalogue.version
    if ann is not None and ann.stamp.get("int8") != catalogue.int8:
        ann = None  # built for the other storage: not this index's graph
    if ann is not None and ann.stamp.get("version") == version and ann.stamp.get("count") == len(table):
        return ann
    removed_since = ann is not None and int(catalogue.meta.get("last_removal_version", 0)) > ann.stamp["version"]
    ann = ann.extend(table, version) if ann is not None and not removed_since else None
    if ann is None or ann.index.ntotal != len(table):  # new, stale after a removal, or disagreeing: rebuild
        ann = AnnIndex.build(table, catalogue.int8, version)
    if writable:
        ann.save(index_path)
    return ann


def _stamp(version: int, table, int8: bool) -> dict:
    return {"version": version, "count": len(table), "max_id": int(table.ids.max()) if len(table) else -1, "int8": int8}


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _atomic_write(path: Path, write) -> None:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(name)
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
