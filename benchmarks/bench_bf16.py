"""The bfloat16 inference path: its speed-up over fp32 (interleaved, base-shaped tower, 10-s clips), and its cost
in quality on the real fixture towers (cosine between fp32 and bf16 embeddings of real recordings and captions)
and on a trained demo model (held-out retrieval metrics in both precisions).

    python benchmarks/bench_bf16.py [--demo_model runs/demo/final]
"""

import os
from pathlib import Path

import numpy as np
import torch
from common import (
    ROOT,
    base_parser,
    build_wavlink,
    interleave,
    markdown,
    median,
    noise_clips,
    pick_device,
    scale_defaults,
    whisper_processor,
    write_result,
)


def embed_both(model, fn):
    out = {}
    for precision in ("fp32", "bf16"):
        model.config.inference_precision = precision
        with torch.inference_mode():
            out[precision] = fn().numpy()
    model.config.inference_precision = "fp32"
    return out


def cosine_stats(a, b):
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min()), float(cos.mean())


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="base")
    parser.add_argument("--clips", type=int, default=None, help="default 8 on CPU, 64 on CUDA")
    parser.add_argument(
        "--fixtures", default=os.environ.get("WAVLINK_FIXTURES", str(ROOT.parent / "shared" / "fixtures"))
    )
    parser.add_argument("--demo_model", default=str(ROOT / "runs" / "demo" / "final"))
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    scale_defaults(args, device, clips=(8, 64))
    rows = []

    # speed
    model = build_wavlink(args.shape, device=device)
    processor = whisper_processor()
    batch = {k: v.to(device) for k, v in processor(audio=noise_clips(args.clips, 10.0), sampling_rate=16000).items()}

    def run(precision):
        def go():
            model.config.inference_precision = precision
            with torch.inference_mode():
                model.get_audio_features(**batch)

        return go

    times = {
        k: median(v) for k, v in interleave({"fp32": run("fp32"), "bf16": run("bf16")}, args.repeats, device).items()
    }
    rows.append(
        {
            "check": f"speed, {args.shape}-shaped audio tower, {args.clips} x 10 s",
            "fp32": f"{args.clips / times['fp32']:.2f} clips/s",
            "bf16": f"{args.clips / times['bf16']:.2f} clips/s",
            "effect": f"{times['fp32'] / times['bf16']:.2f}x faster",
        }
    )

    # quality on the real towers
    fixtures = Path(args.fixtures)
    if (fixtures / "whisper-tiny.en").is_dir():
        from modeling_wavlink import WavLinkModel
        from processing_wavlink import WavLinkProcessor

        real = (
            WavLinkModel.from_towers(str(fixtures / "whisper-tiny.en"), str(fixtures / "all-MiniLM-L6-v2"), 256)
            .to(device)
            .eval()
        )
        real_processor = WavLinkProcessor.from_towers(
            str(fixtures / "whisper-tiny.en"), str(fixtures / "all-MiniLM-L6-v2")
        )
        files = sorted(str(p) for p in (fixtures / "audio" / "animals").glob("*.mp3"))
        audio_inputs = {k: v.to(device) for k, v in real_processor(audio=files).items()}
        texts = [f"the sound of a {Path(f).stem}" for f in files]
        text_inputs = {k: v.to(device) for k, v in real_processor(text=texts).items()}
        audio = embed_both(real, lambda: real.get_audio_features(**audio_inputs).pooler_output.float().cpu())
        text = embed_both(real, lambda: real.get_text_features(**text_inputs).pooler_output.float().cpu())
        for name, pair in (("audio", audio), ("text", text)):
            low, mean = cosine_stats(pair["fp32"], pair["bf16"])
            rows.append(
                {
                    "check": f"real towers (whisper-tiny.en + MiniLM), {name} embeddings of 10 real "
                    "{'recordings' if name == 'audio' else 'captions'}",
                    "fp32": "reference",
                    "bf16": f"cosine to fp32: min {low:.5f}, mean {mean:.5f}",
                    "effect": f"{1 - mean:.1e} mean cosine loss",
                }
            )
    else:
        rows.append(
            {"check": "real towers", "fp32": "skipped", "bf16": "skipped", "effect": f"no fixtures at {fixtures}"}
        )

    # quality on a trained model
    demo = Path(args.demo_model)
    if (demo / "config.json").exists() and (demo.parent / "data" / "eval.csv").exists():
        from wavlink.evaluation.readers import read_retrieval_set
        from wavlink.evaluation.tasks import evaluate_retrieval
        from wavlink.loading import load_model_and_processor

        trained, trained_processor = load_model_and_processor(str(demo))
        data = read_retrieval_set(demo.parent / "data" / "eval.csv")
        results = {
            p: evaluate_retrieval(
                trained.to(device),
                trained_processor,
                data.clips,
                data.captions,
                progress=False,
                inference_precision=p,
            )
            for p in ("fp32", "bf16")
        }
        for dim in trained.config.matryoshka_dims:
            f, b = results["fp32"][dim], results["bf16"][dim]
            rows.append(
                {
                    "check": f"trained demo model, held-out retrieval at d={dim}",
                    "fp32": f"t2a R@1 {f['t2a_R@1']:.1f}, R@10 {f['t2a_R@10']:.1f}; a2t R@1 {f['a2t_R@1']:.1f}, "
                    "R@10 {f['a2t_R@10']:.1f}",
                    "bf16": f"t2a R@1 {b['t2a_R@1']:.1f}, R@10 {b['t2a_R@10']:.1f}; a2t R@1 {b['a2t_R@1']:.1f}, "
                    "R@10 {b['a2t_R@10']:.1f}",
                    "effect": f"max |delta| {max(abs(f[k] - b[k]) for k in f if 'R@' in k):.1f} points",
                }
            )
    else:
        rows.append(
            {
                "check": "trained demo model",
                "fp32": "skipped",
                "bf16": "skipped",
                "effect": f"no trained model at {demo} (run scripts/demo.sh first)",
            }
        )
    write_result("bf16", args.out, device, vars(args), rows, markdown(rows, ["check", "fp32", "bf16", "effect"]))


if __name__ == "__main__":
    main()
