"""Run every benchmark with its default settings (under 10 minutes on a 2-core CPU machine) and write
`benchmarks/results/summary-<device>.md` with all tables.

    python benchmarks/run_all.py                 # this machine
    python benchmarks/run_all.py --device cuda   # a GPU, bf16
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_audio.py",
    "bench_optimizations.py",
    "bench_text.py",
    "bench_train.py",
    "bench_length_grouping.py",
    "bench_search.py",
    "bench_bf16.py",
    "bench_end_to_end.py",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--only", nargs="+", default=None, help="run only these scripts")
    parser.add_argument("--summary_only", action="store_true", help="only rebuild the summaries from the JSON files")
    args = parser.parse_args(argv)
    started, failures = time.perf_counter(), []
    for script in [] if args.summary_only else args.only or SCRIPTS:
        print(f"\n=== {script}", flush=True)
        t = time.perf_counter()
        result = subprocess.run([sys.executable, str(HERE / script), "--device", args.device, "--out", args.out])
        print(f"=== {script}: {time.perf_counter() - t:.0f} s, exit {result.returncode}", flush=True)
        if result.returncode:
            failures.append(script)
    records = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*.json"))]
    for device_type in sorted({r["machine"]["device"].split(":")[0] for r in records}):
        mine = [r for r in records if r["machine"]["device"].startswith(device_type)]
        machine = mine[0]["machine"]
        header = (
            f"# WavLink benchmarks on {machine.get('gpu') or machine.get('cpu')} ({device_type})\n\n"
            f"torch {machine['torch']}, transformers {machine['transformers']}, {machine['cpu_count']} CPU cores, "
            f"{machine['torch_threads']} torch threads; CPU bf16 support: {machine.get('cpu_bf16')}.\n"
        )
        body = "\n".join(f"\n## {r['benchmark']} ({r['time']})\n\n{r['table']}\n" for r in mine)
        (Path(args.out) / f"summary-{device_type}.md").write_text(header + body)
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s; failures: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
