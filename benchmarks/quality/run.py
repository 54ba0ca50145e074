"""Does the global token earn its place? Train recipes x audio poolings x seeds for the same wall-clock budget on the
quality benchmark (`generate.py`), score each with `wavlink-eval retrieval`, and report mean ± spread over seeds.

Every run is `train.py` from the real towers (whisper-tiny.en + all-MiniLM-L6-v2 from the fixtures), d=256, batch
32, lr 1e-4, bf16, `--group_by_length`, `--max_train_minutes` BUDGET; then `wavlink-eval retrieval` on the test clips
(three captions each). Results are written after every run (a rerun skips finished ones), to
`benchmarks/results/quality-cpu.json`, with a Markdown table.

    python benchmarks/quality/run.py                      # 2 recipes x 2 poolings x 3 seeds, 2 minutes each
    python benchmarks/quality/run.py --minutes 15 --recipes paper new-lr-x10 --seeds 1 2 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "quality"))

from generate import generate  # noqa: E402

# Each recipe is train.py flags on top of the common ones; "paper" is WavLink 0.1's (and the paper's) single rate.
# Every recipe starts from `--recipe paper` and names what it changes, so it means the same whatever the defaults.
PAPER = ["--recipe", "paper"]
X10 = [*PAPER, "--new_parameters_lr_multiplier", "10"]
RECIPES = {
    "paper": PAPER,
    "new-lr-x10": X10,
    "new-lr-x10-warmup20": [*X10, "--warmup_ratio", "0.2"],
    "siglip": [*PAPER, "--loss_type", "siglip"],
    "paper-frame-mean": [*PAPER, "--global_token_init", "frame_mean"],
    "x10-frame-mean": [*X10, "--global_token_init", "frame_mean"],
    "x10-warm-start-20": [*X10, "--freeze_towers_ratio", "0.2"],
    "x10-temperature-0.03": [*X10, "--temperature_init", "0.03"],
}
# Flags that only mean something for a global token (mean pooling runs the recipe without them).
TOKEN_ONLY = {"--global_token_init"}
POOLINGS = ("global_token", "mean")
METRICS = (("t2a_R@1", "256"), ("t2a_R@1", "32"), ("a2t_R@1", "256"))


def fixtures() -> Path:
    return Path(os.environ.get("WAVLINK_FIXTURES", ROOT.parent / "shared" / "fixtures"))


def call(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-3000:]}")


def recipe_flags(recipe: str, pooling: str) -> list[str]:
    flags = RECIPES[recipe]
    if pooling == "global_token":
        return list(flags)
    pairs = zip(flags[::2], flags[1::2])
    return [item for name, value in pairs if name not in TOKEN_ONLY for item in (name, value)]


def run_one(recipe: str, pooling: str, seed: int, minutes: float, data: dict, out: Path) -> dict:
    folder = out / f"{recipe}-{pooling}-{seed}"
    command = [
        sys.executable, str(ROOT / "train.py"),
        "--audio_tower", str(fixtures() / "whisper-tiny.en"), "--text_tower", str(fixtures() / "all-MiniLM-L6-v2"),
        "--projection_dim", "256", "--train_files", str(data["train"]), "--output_dir", str(folder),
        "--max_train_minutes", str(minutes), "--per_device_train_batch_size", "32", "--learning_rate", "1e-4",
        "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.05", "--mixed_precision", "bf16", "--group_by_length",
        "--audio_pooling", pooling, "--seed", str(seed), "--report_to", "none", "--save_steps", "0",
        "--logging_steps", "10", *recipe_flags(recipe, pooling),
    ]  # fmt: skip
    start = time.perf_counter()
    call(command)
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    steps = max(r.get("step", 0) for r in log)
    evaluation = [sys.executable, "-m", "wavlink.evaluation", "retrieval", "--model", str(folder / "final"),
                  "--data", str(data["test"]), "--layout", "table", "--out", str(folder / "eval"), "--no_progress",
                  "--dims", "256", "32"]  # fmt: skip
    call(evaluation)
    results = json.loads(next((folder / "eval").glob("*.json")).read_text())["results"]
    return {"recipe": recipe, "pooling": pooling, "seed": seed, "minutes": minutes, "steps": steps,
            "wall_seconds": round(wall, 1), **{f"{m} d={d}": results[d][m] for m, d in METRICS}}  # fmt: skip


def summarise(runs: list[dict]) -> tuple[list[dict], str]:
    rows = []
    groups = dict.fromkeys((r["minutes"], r["recipe"]) for r in runs)
    for minutes, recipe in sorted(groups, key=lambda group: group[0]):  # by budget, recipes in the order run
        for pooling in POOLINGS:
            mine = [r for r in runs if (r["minutes"], r["recipe"], r["pooling"]) == (minutes, recipe, pooling)]
            if not mine:
                continue
            row = {"minutes": minutes, "recipe": recipe, "audio pooling": pooling, "seeds": len(mine),
                   "steps": round(statistics.mean(r["steps"] for r in mine)),
                   "wall s": round(statistics.mean(r["wall_seconds"] for r in mine))}  # fmt: skip
            for metric, dim in METRICS:
                values = [r[f"{metric} d={dim}"] for r in mine]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                row[f"{metric} d={dim}"] = f"{statistics.mean(values):.1f} ± {spread:.1f}"
            rows.append(row)
    columns = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return rows, "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "quality"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "quality"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality-cpu.json"))
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per run")
    parser.add_argument("--recipes", nargs="+", default=["paper", "new-lr-x10"], choices=list(RECIPES))
    parser.add_argument("--poolings", nargs="+", default=list(POOLINGS), choices=list(POOLINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--train", type=int, default=1000, help="training clips in the benchmark")
    parser.add_argument("--test", type=int, default=150, help="test clips (three captions each)")
    args = parser.parse_args(argv)
    data = generate(Path(args.data), args.train, args.test, seed=0)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"runs": []}
    done = {(r["recipe"], r["pooling"], r["seed"], r["minutes"]) for r in record["runs"]}
    for seed in args.seeds:  # seeds outermost: a partial study still compares every recipe and pooling
        for recipe in args.recipes:
            for pooling in args.poolings:
                if (recipe, pooling, seed, args.minutes) in done:
                    continue
                result = run_one(recipe, pooling, seed, args.minutes, data, Path(args.runs))
                print(json.dumps(result), flush=True)
                record["runs"].append(result)
                record["rows"], record["table"] = summarise(record["runs"])
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(record, indent=2))
    print(record.get("table", "no runs"))


if __name__ == "__main__":
    main()
