"""Search latency, recall and memory: exact numpy search (float32 and int8, as `WavLinkIndex` does it) beside the FAISS
HNSW graph (`wavlink/search/ann.py`) on the same vectors and queries, plus the cost of opening an index once against
reopening it per query.

Vectors are synthetic but clustered (real embeddings are not uniform on the sphere: uniform random vectors are the
worst case for any ANN and no real collection looks like them); queries are cluster centres plus noise, not stored
vectors. Recall@10 is measured against exact float32 search in the same run. Latency is the median over single
queries; build time and memory are reported for each index.

    python benchmarks/bench_search.py                          # 100k and 1M x 512 (the 1M graph builds in minutes)
    python benchmarks/bench_search.py --sizes 100000 --dims 256
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, base_parser, markdown, median, pick_device, write_result

sys.path.insert(0, str(ROOT))

from wavlink.search import WavLinkIndex  # noqa: E402
from wavlink.search.ann import AnnIndex  # noqa: E402
from wavlink.search.store import AudioIndex, VectorTable, quantize_int8  # noqa: E402


def clustered(count: int, dim: int, clusters: int, rng) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    vectors = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):  # in blocks: a 1M x 512 float64 temporary would double the memory
        stop = min(count, start + 100_000)
        block = centres[rng.integers(0, clusters, stop - start)]
        block += 0.6 * rng.standard_normal(block.shape, dtype=np.float32)
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return vectors, centres


def table_of(vectors: np.ndarray, int8: bool) -> VectorTable:
    n = len(vectors)
    codes, scales = quantize_int8(vectors) if int8 else (vectors, np.ones(n, np.float32))
    zeros = np.zeros(n)
    return VectorTable(np.arange(1, n + 1), [f"/clips/{i}.wav" for i in range(n)], zeros, zeros, zeros, codes, scales)


def searcher(table: VectorTable, ann) -> WavLinkIndex:
    """A `WavLinkIndex` over an in-memory table (no SQLite file: the catalogue's cost is measured apart)."""
    catalogue = type("Catalogue", (), {"dim": table.codes.shape[1], "meta": {}})()
    return WavLinkIndex(catalogue, table, ann)


def latency(index: WavLinkIndex, queries: np.ndarray, k: int) -> tuple[float, list[set]]:
    times, found = [], []
    for query in queries:
        start = time.perf_counter()
        hits = index.search(embedding=query, k=k)
        times.append(time.perf_counter() - start)
        found.append({h.path for h in hits})
    return 1000 * median(times[1:]), found


def recall(found: list[set], truth: list[set], k: int) -> float:
    return float(np.mean([len(a & b) / k for a, b in zip(found, truth)]))


def open_once_vs_per_query(count: int, dim: int, rng) -> dict:
    """Seconds for 20 queries: one `WavLinkIndex.open` then 20 searches, against reopening per query (0.1's way)."""
    vectors, _ = clustered(count, dim, 200, rng)
    queries = vectors[rng.integers(0, count, 20)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.index"
        catalogue = AudioIndex.create(path, "synthetic", dim, False, "fingerprint")
        catalogue.add([(f"/clips/{i}.wav", 1, 1.0, 1.0) for i in range(count)], vectors)
        start = time.perf_counter()
        index = WavLinkIndex.open(path, ann=False)
        for query in queries[:20]:
            index.search(embedding=query, k=10)
        once = time.perf_counter() - start
        start = time.perf_counter()
        for query in queries[:20]:
            WavLinkIndex.open(path, ann=False).search(embedding=query, k=10)
        reopened = time.perf_counter() - start
    return {"vectors": count, "dim": dim, "open once, 20 queries s": once, "reopen per query, 20 queries s": reopened,
            "speed-up": reopened / once}  # fmt: skip


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[512])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    import faiss

    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        for dim in args.dims:
            vectors, centres = clustered(size, dim, max(100, size // 500), rng)
            queries = centres[rng.integers(0, len(centres), args.queries)]
            queries = queries + 0.6 * rng.standard_normal(queries.shape).astype(np.float32)
            truth = None
            for kind in ("float32", "int8"):
                table = table_of(vectors, kind == "int8")
                exact_ms, found = latency(searcher(table, None), queries, args.k)
                truth = truth or found
                start = time.perf_counter()
                graph = AnnIndex.build(table, kind == "int8", 0)
                build_s = time.perf_counter() - start
                ann_ms, ann_found = latency(searcher(table, graph), queries, args.k)
                stored_mb = table.codes.nbytes / 2**20 + (table.scales.nbytes / 2**20 if kind == "int8" else 0)
                graph_mb = len(faiss.serialize_index(graph.index)) / 2**20
                for method, ms, hits, build, memory in (
                    ("exact", exact_ms, found, 0.0, stored_mb),
                    ("faiss hnsw", ann_ms, ann_found, build_s, stored_mb + graph_mb),
                ):
                    rows.append({
                        "vectors": size, "dim": dim, "storage": kind, "search": method,
                        "query ms (median)": ms,
                        "recall@10 vs exact float32": recall(hits, truth, args.k),
                        "build s": build, "memory MB": memory,
                    })  # fmt: skip
                print(rows[-2], rows[-1], flush=True)
    reopen = open_once_vs_per_query(20_000, 256, rng)
    columns = ["vectors", "dim", "storage", "search", "query ms (median)", "recall@10 vs exact float32", "build s",
               "memory MB"]  # fmt: skip
    table = (
        markdown(rows, columns)
        + "\n\n"
        + markdown([reopen], list(reopen))
        + (
            "\n\nMemory: the vectors as stored in memory (int8 codes + scales), plus the serialised graph for FAISS. "
            f"HNSW M=16, efConstruction=128, efSearch=64; {faiss.omp_get_max_threads()} threads."
        )
    )
    write_result("search", args.out, pick_device("cpu"), vars(args), rows, table, reopen=reopen)


if __name__ == "__main__":
    main()
