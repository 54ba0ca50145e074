"""Brute-force search latency and index size at every Matryoshka dim, float32 and int8, for 100k and 1M vectors.

Latency is the median over queries of one text query against the whole matrix (cosine top-10), as
`wavlink-search` does it; size is the stored embedding bytes (int8 adds a 4-byte scale per vector)."""

import time

import numpy as np
import torch
from common import base_parser, markdown, median, pick_device, synchronize, write_result

from wavlink.search.index import quantize_int8


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 256, 128, 64])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    rows = []
    for size in args.sizes:
        generator = torch.Generator(device="cpu").manual_seed(0)
        full = torch.nn.functional.normalize(torch.randn(size, max(args.dims), generator=generator), dim=-1)
        queries = torch.nn.functional.normalize(torch.randn(args.queries, max(args.dims), generator=generator), dim=-1)
        for dim in args.dims:
            matrix = torch.nn.functional.normalize(full[:, :dim], dim=-1).contiguous()
            codes, scales = quantize_int8(matrix.numpy())
            stored = {"float32": matrix, "int8": torch.from_numpy(codes.astype(np.float32) * scales[:, None])}
            exact_top = None
            for kind, vectors in stored.items():
                vectors = vectors.to(device)
                q = torch.nn.functional.normalize(queries[:, :dim], dim=-1).to(device)
                latencies, tops = [], []
                for i in range(args.queries):
                    synchronize(device)
                    start = time.perf_counter()
                    top = torch.topk(vectors @ q[i], args.k).indices
                    synchronize(device)
                    latencies.append(time.perf_counter() - start)
                    tops.append(set(top.tolist()))
                if kind == "float32":
                    exact_top = tops
                recall = float(np.mean([len(a & b) / args.k for a, b in zip(tops, exact_top)]))
                size_bytes = size * dim * 4 if kind == "float32" else size * (dim + 4)
                rows.append(
                    {
                        "vectors": size,
                        "dim": dim,
                        "storage": kind,
                        "index MB": size_bytes / 2**20,
                        "query ms (median)": 1000 * median(latencies[1:] or latencies),
                        "top-10 overlap with float32": recall,
                    }
                )
    columns = ["vectors", "dim", "storage", "index MB", "query ms (median)", "top-10 overlap with float32"]
    write_result("search", args.out, device, vars(args), rows, markdown(rows, columns))


if __name__ == "__main__":
    main()
