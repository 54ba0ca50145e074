"""Shared pieces of the benchmarks: the machine record, timing, towers of the paper's shapes, and output.

Timings on shared machines are noisy, so variants are interleaved (each repeat runs every variant once, in turn)
and reported as medians, with ratios computed within one run.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Whisper encoder shapes of the paper's towers (tiny is our fixture's size).
WHISPER_SHAPES = {
    "tiny": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
    "base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048),
    "small": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072),
}
# Text towers: CLIP ViT-B/32's text transformer, and MiniLM-L6 (the fixture).
TEXT_SHAPES = {
    "clip-b32-text": dict(
        model_type="clip_text_model",
        hidden_size=512,
        num_hidden_layers=12,
        num_attention_heads=8,
        intermediate_size=2048,
        vocab_size=49408,
        max_position_embeddings=77,
    ),
    "minilm-l6": dict(
        model_type="bert",
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        vocab_size=30522,
        max_position_embeddings=512,
    ),
}
SMALL_TEXT = dict(
    model_type="bert",
    hidden_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=128,
    vocab_size=1000,
    max_position_embeddings=128,
)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON results")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per variant (median reported)")
    return parser


def scale_defaults(args, device: torch.device, **gpu_defaults) -> None:
    """Options left at None take their CPU default, or a larger GPU default so a GPU run measures more than launch
    overhead. `gpu_defaults` maps option -> (cpu value, cuda value)."""
    for name, (cpu, cuda) in gpu_defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, cuda if device.type == "cuda" else cpu)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine(device: torch.device) -> dict:
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
        info["cpu"] = next(
            (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?"
        )
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
        info["cpu_bf16"] = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags.split()]
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleave(variants: dict, repeats: int, device: torch.device, warmup: int = 1) -> dict[str, list[float]]:
    """Run every variant `warmup` times, then `repeats` rounds of every variant in turn; returns all times."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return times


def median(values) -> float:
    return float(statistics.median(values))


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Measured dense matmul rate in FLOP/s: this machine's practical ceiling for the dtype."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = [timed(lambda: a @ b, device) for _ in range(repeats)]
    return 2 * size**3 / median(times)


def whisper_encoder_flops(shape: dict, mel_frames: int, num_mel_bins: int = 80, extra_tokens: int = 1) -> float:
    """FLOPs (2 per multiply-add) of one Whisper encoder pass on `mel_frames` log-mel frames."""
    d, layers, ffn = shape["d_model"], shape["encoder_layers"], shape["encoder_ffn_dim"]
    frames = (mel_frames + 1) // 2
    tokens = frames + extra_tokens
    conv = 2 * mel_frames * num_mel_bins * d * 3 + 2 * frames * d * d * 3
    per_layer = 2 * tokens * d * d * 4 + 2 * 2 * tokens * tokens * d + 2 * 2 * tokens * d * ffn
    return conv + layers * per_layer


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            cells.append(f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_result(
    name: str, out: str, device: torch.device, settings: dict, rows: list[dict], table: str, **extra
) -> Path:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{device.type}.json"
    record = {
        "benchmark": name,
        "machine": machine(device),
        "settings": settings,
        "rows": rows,
        "table": table,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }
    path.write_text(json.dumps(record, indent=2, default=str))
    print(f"\n## {name} ({device}: {record['machine'].get('gpu', record['machine'].get('cpu', ''))})\n")
    print(table)
    print(f"\nwritten: {path}")
    return path


def noise_clips(count: int, seconds: float, rate: int = 16000, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(int(seconds * rate)) * 0.1).astype(np.float32) for _ in range(count)]


def build_wavlink(shape: str, text_shape: dict | None = None, device=torch.device("cpu"), attn="sdpa", **config):
    from configuration_wavlink import WavLinkConfig
    from modeling_wavlink import WavLinkModel

    torch.manual_seed(0)
    cfg = WavLinkConfig(
        audio_config=dict(
            WHISPER_SHAPES[shape], num_mel_bins=80, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64
        ),
        text_config=text_shape or SMALL_TEXT,
        projection_dim=512,
        attn_implementation=attn,
        **config,
    )
    return WavLinkModel(cfg).to(device).eval()


def whisper_processor(text_captions=("a sound",)):
    from transformers import WhisperFeatureExtractor

    from processing_wavlink import WavLinkProcessor
    from wavlink.training.tokenization import build_word_tokenizer

    return WavLinkProcessor(
        WhisperFeatureExtractor(feature_size=80, return_attention_mask=False), build_word_tokenizer(text_captions)
    )
