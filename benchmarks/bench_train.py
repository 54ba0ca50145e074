"""Training step throughput (samples/s) and peak memory for each regime (full, LoRA, projector-only), with and
without gradient checkpointing. Each variant runs in its own process so its peak memory is its own (max RSS on
CPU, `max_memory_allocated` on CUDA); the variants alternate over the repeats.

Towers default to the fixtures' shapes (Whisper tiny.en under the global token, MiniLM-L6), random weights,
5-s clips, CLIP loss with Matryoshka, AdamW.
"""

import json
import subprocess
import sys

from common import ROOT, base_parser, markdown, median, pick_device, scale_defaults, write_result

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import torch
from common import build_wavlink, noise_clips, whisper_processor, TEXT_SHAPES
import train
from wavlink.training.regimes import apply_regime, parameter_groups
from modeling_wavlink import matryoshka_contrastive_loss
device = torch.device({device!r})
model = build_wavlink({shape!r}, text_shape=TEXT_SHAPES["minilm-l6"], device=device)
args = train.ModelArguments(model_name_or_path="x", finetune={regime!r}, lora_rank=8)
model = apply_regime(model, args)
if {checkpointing}:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={{"use_reentrant": False}})
model.train()
optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-4)
processor = whisper_processor(["a dog barks in the rain"] * 2)
clips = noise_clips({batch}, {seconds})
inputs = processor(audio=clips, sampling_rate=16000, text=["a dog barks in the rain"] * {batch})
batch = {{k: v.to(device) for k, v in inputs.items()}}
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled={bf16})
def step():
    with autocast:
        out = model(**batch)
        loss = matryoshka_contrastive_loss(
            out.audio_embeds.float(), out.text_embeds.float(), logit_scale=out.logit_scale, logit_bias=out.logit_bias,
            loss_type="clip", matryoshka_dims=[512, 256, 128, 64])
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    if device.type == "cuda": torch.cuda.synchronize()
for _ in range(2): step()
times = []
for _ in range({steps}):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
if device.type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(json.dumps({{"times": times, "peak_mb": peak, "trainable": trainable}}))
"""


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default=None, help="audio tower shape (default tiny on CPU, base on CUDA)")
    parser.add_argument("--batch_size", type=int, default=None, help="default 8 on CPU, 64 on CUDA")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.set_defaults(repeats=2)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    scale_defaults(args, device, shape=("tiny", "base"), batch_size=(8, 64))
    bf16 = device.type == "cuda"
    variants = [(regime, ckpt) for regime in ("full", "lora", "projector") for ckpt in (False, True)]
    results = {v: {"times": [], "peak_mb": [], "trainable": 0} for v in variants}
    for _ in range(args.repeats):
        for regime, ckpt in variants:
            code = CHILD.format(
                root=str(ROOT),
                bench=str(ROOT / "benchmarks"),
                device=str(device),
                shape=args.shape,
                regime=regime,
                checkpointing=ckpt,
                batch=args.batch_size,
                seconds=args.seconds,
                steps=args.steps,
                bf16=bf16,
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            record = json.loads(out.stdout.strip().splitlines()[-1])
            results[(regime, ckpt)]["times"] += record["times"]
            results[(regime, ckpt)]["peak_mb"].append(record["peak_mb"])
            results[(regime, ckpt)]["trainable"] = record["trainable"]
    full = median(results[("full", False)]["times"])
    rows = [
        {
            "regime": regime,
            "gradient checkpointing": ckpt,
            "trainable params": r["trainable"],
            "samples/s": args.batch_size / median(r["times"]),
            "speed vs full": full / median(r["times"]),
            "peak memory MB": median(r["peak_mb"]),
        }
        for (regime, ckpt), r in results.items()
    ]
    table = markdown(
        rows, ["regime", "gradient checkpointing", "trainable params", "samples/s", "speed vs full", "peak memory MB"]
    )
    table += (
        "\n\nPeak memory is "
        + (
            "CUDA max_memory_allocated"
            if device.type == "cuda"
            else "the process's max RSS (includes Python and torch)"
        )
        + "."
    )
    write_result("training", args.out, device, vars(args) | {"bf16_autocast": bf16}, rows, table)


if __name__ == "__main__":
    main()
