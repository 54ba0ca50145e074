"""Resident memory of `train.py` over a long run: RSS every 50 steps, growth after step 200.

The setup of the report that found the growth: real whisper-tiny.en and MiniLM towers (from the fixtures; random
towers of the same shapes where they are absent), batch 32, bf16, `--group_by_length`, on a synthetic set of 2,000
clips of 1-8 s. Each variant is one `train.py` process, sampled from outside (`/proc/<pid>/status`) while its
`log.jsonl` names the step; variants differ only in `--release_memory_steps` (0 = never return freed memory to the
OS, the behaviour before the fix). The goal is under 10% growth after step 200.

    python benchmarks/bench_train_memory.py                   # 2,000 steps per variant (about 35 min each on 2 cores)
    python benchmarks/bench_train_memory.py --steps 400       # a shorter look
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
from common import ROOT, base_parser, markdown, median, pick_device, write_result

FIXTURES = [Path(os.environ.get("WAVLINK_FIXTURES", "")), ROOT.parent / "shared" / "fixtures"]


def make_clips(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` noise-and-tone clips of 1-8 s and a caption table (words vary so captions vary in length)."""
    rng = np.random.default_rng(seed)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    words = ["dog", "rain", "engine", "bird", "door", "wind", "crowd", "siren", "bell", "water"]
    rows = ["audio,caption"]
    for index in range(count):
        seconds = rng.uniform(1.0, 8.0)
        t = np.arange(int(seconds * 16000)) / 16000
        clip = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(len(t))
        soundfile.write(folder / "audio" / f"{index:05d}.wav", clip.astype(np.float32), 16000)
        caption = " ".join(rng.choice(words, size=int(rng.integers(2, 12))))
        rows.append(f"audio/{index:05d}.wav,{caption}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return folder / "train.csv"


def tower_flags() -> tuple[list[str], str]:
    for root in FIXTURES:
        if (root / "whisper-tiny.en").is_dir() and (root / "all-MiniLM-L6-v2").is_dir():
            return [
                "--audio_tower",
                str(root / "whisper-tiny.en"),
                "--text_tower",
                str(root / "all-MiniLM-L6-v2"),
                "--projection_dim",
                "256",
            ], "whisper-tiny.en + all-MiniLM-L6-v2 (fixtures)"
    audio = {
        "d_model": 384,
        "encoder_layers": 4,
        "encoder_attention_heads": 6,
        "encoder_ffn_dim": 1536,
        "decoder_layers": 1,
        "decoder_attention_heads": 2,
        "decoder_ffn_dim": 64,
    }
    text = {
        "model_type": "bert",
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    }
    return [
        "--audio_config",
        json.dumps(audio),
        "--text_config",
        json.dumps(text),
        "--projection_dim",
        "256",
    ], "random towers of the tiny.en + MiniLM shapes (fixtures absent)"


def rss_gb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def last_step(log: Path) -> int:
    if not log.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def run_variant(table: Path, out: Path, towers: list[str], args, release_steps: int) -> dict:
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "--train_files",
        str(table),
        *towers,
        "--output_dir",
        str(out),
        "--max_steps",
        str(args.steps),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--mixed_precision",
        args.mixed_precision,
        "--group_by_length",
        "true",
        "--logging_steps",
        str(args.every),
        "--save_steps",
        "0",
        "--report_to",
        "none",
        "--max_audio_seconds",
        "8",
        "--release_memory_steps",
        str(release_steps),
        "--cpu",
        "true",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples, peak, log = {}, 0.0, out / "log.jsonl"
    start = time.perf_counter()
    while process.poll() is None:
        rss = rss_gb(process.pid)
        if rss:
            peak = max(peak, rss)
            step = last_step(log)
            if step and step % args.every == 0 and step not in samples:
                samples[step] = rss
        time.sleep(0.5)
    if process.returncode:
        raise RuntimeError(f"train.py failed (exit {process.returncode}): {process.stderr.read()[-2000:]}")
    wall = time.perf_counter() - start
    rates = [
        json.loads(line)["samples_per_second"] for line in log.read_text().splitlines() if "samples_per_second" in line
    ]
    after = {s: v for s, v in samples.items() if s >= args.baseline_step}
    first = after[min(after)] if after else float("nan")
    last = samples[max(samples)] if samples else float("nan")
    return {
        "release_memory_steps": release_steps,
        "rss_by_step_gb": samples,
        "peak_rss_gb": peak,
        f"rss_at_{min(after) if after else args.baseline_step}_gb": first,
        "rss_last_gb": last,
        "growth_after_baseline_pct": 100 * (last - first) / first,
        "median_samples_per_s": median(rates[1:] or rates),
        "wall_s": wall,
    }


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=50, help="sample RSS every N steps")
    parser.add_argument("--baseline_step", type=int, default=200, help="growth is measured from the first sample here")
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--mixed_precision", default="bf16")
    parser.add_argument("--variants", type=int, nargs="+", default=[1, 0], help="--release_memory_steps values")
    args = parser.parse_args(argv)
    device = pick_device("cpu")
    towers, tower_note = tower_flags()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        table = make_clips(Path(tmp) / "data", args.clips)
        for release in args.variants:
            print(f"release_memory_steps={release}: {args.steps} steps ...", flush=True)
            row = run_variant(table, Path(tmp) / f"run-{release}", towers, args, release)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "rss_by_step_gb"}), flush=True)
    columns = [
        "release_memory_steps",
        *[c for c in rows[0] if c.startswith("rss_at_")],
        "rss_last_gb",
        "peak_rss_gb",
        "growth_after_baseline_pct",
        "median_samples_per_s",
        "wall_s",
    ]
    table = markdown(rows, columns)
    steps = sorted({s for r in rows for s in r["rss_by_step_gb"]})
    table += "\n\nRSS (GB) by step:\n\n" + markdown(
        [
            {"step": s, **{f"release={r['release_memory_steps']}": r["rss_by_step_gb"].get(s, "") for r in rows}}
            for s in steps
        ],
        ["step", *[f"release={r['release_memory_steps']}" for r in rows]],
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "device", "repeats")}
    write_result("train_memory", args.out, device, {**settings, "towers": tower_note}, rows, table)


if __name__ == "__main__":
    main()
