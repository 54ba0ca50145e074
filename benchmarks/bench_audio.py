"""Audio embedding throughput on 10-s clips: WavLink on variable-length input vs the paper's 30-s padded input vs
transformers' ClapModel audio tower (HTSAT, `laion/clap-htsat-unfused`-shaped, random weights), with feature
extraction timed apart from the model. Also the achieved FLOP/s of the Whisper tower against the measured matmul
peak. One run interleaves every variant; medians and ratios are reported.

    python benchmarks/bench_audio.py                      # tiny, base and small shapes on this machine
    python benchmarks/bench_audio.py --device cuda        # bf16 on a GPU
"""

import numpy as np
import torch
from common import (
    WHISPER_SHAPES,
    base_parser,
    build_wavlink,
    interleave,
    markdown,
    matmul_peak,
    median,
    noise_clips,
    pick_device,
    scale_defaults,
    whisper_encoder_flops,
    whisper_processor,
    write_result,
)


def clap_audio_tower(device):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    # default config = the HTSAT-unfused shape; bf16 runs under autocast like WavLink (weights stay fp32)
    model = ClapModel(ClapConfig()).to(device).eval()
    # "unfused" checkpoints pad/crop to 10 s and use no fusion
    extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    return model, extractor


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "base", "small"], choices=list(WHISPER_SHAPES))
    parser.add_argument(
        "--clips", type=int, default=None, help="10-s clips per measurement (default 8 on CPU, 64 on CUDA)"
    )
    parser.add_argument("--batch_size", type=int, default=None, help="default 8 on CPU, 32 on CUDA")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--precision", default=None, choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on CPU"
    )
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    scale_defaults(args, device, clips=(8, 64), batch_size=(8, 32))
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    peaks = {"fp32": matmul_peak(device, torch.float32), "bf16": matmul_peak(device, torch.bfloat16)}

    clips16 = noise_clips(args.clips, args.seconds)
    clips48 = [np.repeat(c, 3) for c in clips16]  # the same signal at 48 kHz for CLAP (sample-and-hold: speed only)
    processor = whisper_processor()
    clap, clap_extractor = clap_audio_tower(device)
    batches = [list(range(i, min(i + args.batch_size, args.clips))) for i in range(0, args.clips, args.batch_size)]

    def wavlink_features(padding, feature_device="cpu"):
        return [
            {
                k: v.to(device)
                for k, v in processor(
                    audio=[clips16[i] for i in b], sampling_rate=16000, padding=padding, feature_device=feature_device
                ).items()
            }
            for b in batches
        ]

    def clap_features():
        return [
            clap_extractor([clips48[i] for i in b], sampling_rate=48000, return_tensors="pt").to(device)
            for b in batches
        ]

    rows = []
    for shape in args.shapes:
        model = build_wavlink(shape, device=device)
        model.config.inference_precision = precision
        varlen, padded, clapped = wavlink_features("longest"), wavlink_features("max_length"), clap_features()

        def run_model(feats, fn):
            def go():
                with torch.inference_mode():
                    for batch in feats:
                        fn(**batch)

            return go

        clap_autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else torch.autocast(device.type, enabled=False)
        )

        def clap_model():
            with torch.inference_mode(), clap_autocast:
                for batch in clapped:
                    clap.get_audio_features(input_features=batch["input_features"], is_longer=batch.get("is_longer"))

        variants = {
            "wavlink variable-length: features": lambda: wavlink_features("longest"),
            "wavlink variable-length: features on device": lambda: wavlink_features("longest", device),
            "wavlink variable-length: model": run_model(varlen, model.get_audio_features),
            "wavlink 30-s padded: features": lambda: wavlink_features("max_length"),
            "wavlink 30-s padded: model": run_model(padded, model.get_audio_features),
            "clap htsat: features": clap_features,
            "clap htsat: model": clap_model,
        }
        times = interleave(variants, args.repeats, device)
        med = {name: median(t) for name, t in times.items()}
        mel_frames = varlen[0]["input_features"].shape[-1]
        flops_var = whisper_encoder_flops(WHISPER_SHAPES[shape], mel_frames) * args.clips
        flops_pad = whisper_encoder_flops(WHISPER_SHAPES[shape], 3000) * args.clips
        for label, key, flops in (
            ("wavlink variable-length", "wavlink variable-length", flops_var),
            ("wavlink 30-s padded", "wavlink 30-s padded", flops_pad),
            ("clap htsat (random)", "clap htsat", None),
        ):
            model_time, feature_time = med[f"{key}: model"], med[f"{key}: features"]
            row = {
                "shape": shape,
                "variant": label,
                "precision": precision,
                "model clips/s": args.clips / model_time,
                "features clips/s": args.clips / feature_time,
                "end-to-end clips/s": args.clips / (model_time + feature_time),
                "model speed-up vs 30-s": med["wavlink 30-s padded: model"] / model_time,
            }
            if flops is not None:
                row["audio tower GFLOP/s"] = flops / model_time / 1e9
                row["share of matmul peak"] = flops / model_time / peaks[precision]
            rows.append(row)
        rows[-3]["features on device clips/s"] = args.clips / med["wavlink variable-length: features on device"]
        del model
    columns = [
        "shape",
        "variant",
        "precision",
        "model clips/s",
        "features clips/s",
        "features on device clips/s",
        "end-to-end clips/s",
        "model speed-up vs 30-s",
        "audio tower GFLOP/s",
        "share of matmul peak",
    ]
    table = markdown(rows, columns) + (
        f"\n\nMeasured matmul peak (2048^3): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s."
    )
    write_result(
        "audio_embedding", args.out, device, vars(args) | {"precision": precision}, rows, table, matmul_peak_flops=peaks
    )


if __name__ == "__main__":
    main()
