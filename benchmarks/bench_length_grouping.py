"""Length-grouped batching for training (`--group_by_length`): mean padded batch length and training samples/s
with and without it, on 2000 clips of 1-8 s (batch 32), interleaved. Demo-shaped towers (random weights)."""

import time

import numpy as np
import torch
from common import base_parser, markdown, median, pick_device, whisper_processor, write_result

from wavlink.training.data import LengthGroupedBatchSampler

DEMO_AUDIO = dict(
    d_model=128,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=512,
    num_mel_bins=80,
    decoder_layers=1,
    decoder_attention_heads=4,
    decoder_ffn_dim=128,
)


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per variant and repeat")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    lengths = np.random.default_rng(0).uniform(1.0, 8.0, size=args.clips)
    samplers = {
        name: LengthGroupedBatchSampler(lengths, args.batch_size, seed=0, group_by_length=grouped)
        for name, grouped in (("random batches", False), ("length-grouped", True))
    }
    padded = {name: float(np.mean([lengths[b].max() for b in s])) for name, s in samplers.items()}

    from configuration_wavlink import WavLinkConfig
    from modeling_wavlink import WavLinkModel

    torch.manual_seed(0)
    model = (
        WavLinkModel(
            WavLinkConfig(
                audio_config=DEMO_AUDIO,
                text_config=dict(
                    model_type="bert",
                    hidden_size=128,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    intermediate_size=512,
                    vocab_size=1000,
                ),
                projection_dim=128,
            )
        )
        .to(device)
        .train()
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    processor = whisper_processor(["a tone over noise"])
    rng = np.random.default_rng(1)
    batches = {name: iter(list(s)) for name, s in samplers.items()}

    def step(indices):
        clips = [(rng.standard_normal(int(lengths[i] * 16000)) * 0.1).astype(np.float32) for i in indices]
        batch = {
            k: v.to(device)
            for k, v in processor(audio=clips, sampling_rate=16000, text=["a tone over noise"] * len(clips)).items()
        }
        model(**batch, return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    times = {name: [] for name in samplers}
    for name in samplers:  # warm-up
        step(next(batches[name]))
    for _ in range(args.repeats):
        for name in samplers:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(next(batches[name]))
            times[name].append((time.perf_counter() - start) / args.steps)
    rows = [
        {
            "batching": name,
            "mean padded length s": padded[name],
            "samples/s": args.batch_size / median(times[name]),
            "speed-up": median(times["random batches"]) / median(times[name]),
        }
        for name in samplers
    ]
    write_result(
        "length_grouping",
        args.out,
        device,
        vars(args),
        rows,
        markdown(rows, ["batching", "mean padded length s", "samples/s", "speed-up"]),
    )


if __name__ == "__main__":
    main()
