"""`WavLinkIndex`: an index opened once and searched many times.

    from wavlink.search import WavLinkIndex

    index = WavLinkIndex.open("sounds.index")                  # vectors in memory once; the model loads on first use
    hits = index.search(text="a door slams", k=5)              # [Hit(path, score, start, end, duration), ...]
    batches = index.search(text=["rain", "a dog barks"], k=5)  # a list of queries: one list of hits per query
    index.search(audio="query.wav", per_file=True)             # segment indexes: each file's best window only
    index.search(embedding=vectors)                            # your own (n, dim) or (dim,) query vectors

Below `ann_threshold` vectors the search is exact (one matrix product; int8 codes are widened a block at a time,
never all at once); above it a FAISS HNSW graph answers (see `ann.py`), kept in step with the catalogue.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ann import DEFAULT_THRESHOLD, up_to_date
from .store import AudioIndex, IndexFileError, model_fingerprint

# Rows widened from int8 per block in exact search.
BLOCK = 65_536
# Candidates asked of the ANN graph per wanted hit, then re-scored exactly.
RERANK = 4


@dataclass(frozen=True)
class Hit:
    """One result: the file, its cosine score, and the time range (seconds) of the matching vector: the whole file
    (0 to its duration), or one window of a segment index."""

    path: str
    score: float
    start: float
    end: float
    duration: float

    def as_dict(self) -> dict:
        return {"path": self.path, "score": self.score, "start": self.start, "end": self.end,
                "duration": self.duration}  # fmt: skip


class WavLinkIndex:
    def __init__(self, catalogue: AudioIndex, table, ann, model=None, device=None, trust_remote_code=False):
        self.catalogue, self.table, self.ann = catalogue, table, ann
        self._model_ref, self._device, self._trust_remote_code = model, device, trust_remote_code
        self._pipe = None
        # cosine needs the stored vectors' norms: 1 for float32, close to 1 for dequantised int8
        self._inverse_norms = 1.0 / np.maximum(
            np.concatenate([np.linalg.norm(table.float32(slice(i, i + BLOCK)), axis=1)
                            for i in range(0, len(table), BLOCK)] or [np.zeros(0)]), 1e-12)  # fmt: skip

    @classmethod
    def open(
        cls, path, model: str | None = None, device=None, trust_remote_code: bool = False, ann: bool | None = None,
        ann_threshold: int = DEFAULT_THRESHOLD,
    ) -> "WavLinkIndex":  # fmt: skip
        """Open an index for searching. `model` overrides the one it records (the recorded one is loaded at the Hub
        commit the index was built with); it is loaded on the first text or audio query. `ann`: True or False forces
        approximate or exact search; None (default) uses the ANN graph from `ann_threshold` vectors on."""
        catalogue = AudioIndex.open(path)
        table = catalogue.load_vectors()
        if not len(table):
            raise IndexFileError(f"index {path} is empty.")
        use_ann = len(table) >= ann_threshold if ann is None else ann
        graph = up_to_date(path, catalogue, table, writable=_writable(path)) if use_ann else None
        return cls(catalogue, table, graph, model, device, trust_remote_code)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def dim(self) -> int:
        return self.catalogue.dim

    def search(self, text=None, audio=None, embedding=None, k: int = 10, per_file: bool = False):
        """Top-`k` `Hit`s per query, best first. Give exactly one of `text` (a string or a list), `audio` (a clip in
        any form the pipeline takes, or a list) or `embedding` (`(dim,)` or `(n, dim)`). A single query returns a
        list of hits; a list of queries returns one list per query. `per_file` keeps each file's best window."""
        given = [
            name for name, value in (("text", text), ("audio", audio), ("embedding", embedding)) if value is not None
        ]
        if len(given) != 1:
            raise ValueError(f"give exactly one of text=, audio= or embedding= (got {given or 'none'}).")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive whole number, got {k!r}.")
        if embedding is not None:
            queries = np.asarray(embedding, dtype=np.float32)
            single = queries.ndim == 1
            queries = np.atleast_2d(queries)
            if queries.shape[1] != self.dim:
                raise ValueError(f"query embeddings have width {queries.shape[1]}; this index stores {self.dim}.")
        else:
            items = text if text is not None else audio
            single = not isinstance(items, (list, tuple))
            modality = "text" if text is not None else "audio"
            queries = self._embed([items] if single else list(items), modality)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        results = [self._top(q, k, per_file) for q in queries]
        return results[0] if single else results

    # ------------------------------------------------------------------ internals

    def _embed(self, items: list, modality: str) -> np.ndarray:
        if self._pipe is None:
            self._pipe = self._load_pipeline()
        if modality == "text":
            return self._pipe(text=items, dim=self.dim, progress=False)
        return self._pipe(audio=items, dim=self.dim, progress=False)

    def _load_pipeline(self):
        from pipeline_wavlink import WavLinkEmbeddingPipeline

        from ..loading import load_model_and_processor, resolve_device

        meta = self.catalogue.meta
        revision = None if self._model_ref else meta.get("model_revision")
        model_ref = self._model_ref or meta["model"]
        model, processor = load_model_and_processor(
            model_ref, trust_remote_code=self._trust_remote_code, revision=revision
        )
        self.catalogue.check_model(model_fingerprint(model), model_ref, "search")
        return WavLinkEmbeddingPipeline(model=model, processor=processor, device=resolve_device(self._device))

    def _top(self, query: np.ndarray, k: int, per_file: bool) -> list[Hit]:
        wanted = min(len(self.table), k * 20 if per_file else k)
        rows, scores = self._ann_top(query, wanted) if self.ann is not None else self._exact_top(query, wanted)
        hits = self._hits(rows, scores, k, per_file)
        if per_file and len(hits) < k and wanted < len(self.table):  # many windows of few files: look at them all
            hits = self._hits(*self._exact_top(query, len(self.table)), k, per_file)
        return hits

    def _hits(self, rows, scores, k: int, per_file: bool) -> list[Hit]:
        """The first `k` of `rows` (best first) as hits; with `per_file`, only each file's first (best) row."""
        table, hits, seen = self.table, [], set()
        for row, score in zip(rows, scores):
            if per_file and table.paths[row] in seen:
                continue
            seen.add(table.paths[row])
            hits.append(Hit(table.paths[row], float(score), float(table.starts[row]), float(table.ends[row]),
                            float(table.durations[row])))  # fmt: skip
            if len(hits) == k:
                break
        return hits

    def _scores(self, query: np.ndarray) -> np.ndarray:
        """Cosine of `query` with every stored vector (int8 codes widened a block at a time)."""
        codes = self.table.codes
        if codes.dtype != np.int8:
            return (codes @ query) * self._inverse_norms
        parts = [
            (codes[i : i + BLOCK].astype(np.float32) @ query) * self.table.scales[i : i + BLOCK]
            for i in range(0, len(codes), BLOCK)
        ]
        return np.concatenate(parts) * self._inverse_norms

    def _exact_top(self, query, wanted):
        scores = self._scores(query)
        top = np.argpartition(-scores, wanted - 1)[:wanted] if wanted < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))]  # best first; ties by row, so results are stable
        return top, scores[top]

    def _ann_top(self, query, wanted):
        """The graph's candidates (RERANK times more than wanted), re-scored exactly from the stored vectors: scores
        are the same cosines exact search gives, and the graph's own quantisation error does not reorder them."""
        _, ids = self.ann.search(query[None], min(len(self.table), wanted * RERANK))
        rows = np.searchsorted(self.table.ids, ids[0][ids[0] >= 0])
        scores = (self.table.float32(rows) @ query) * self._inverse_norms[rows]
        best = np.lexsort((rows, -scores))[:wanted]
        return rows[best], scores[best]


def _writable(path) -> bool:
    return os.access(Path(path).resolve().parent, os.W_OK)
