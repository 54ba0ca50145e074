"""Each inference optimisation measured against its absence, in one interleaved run (base-shaped audio tower,
clips of mixed length 1-10 s):

- length-bucketed batches (sorted by duration) vs batches in arrival order;
- `torch.inference_mode` vs `torch.no_grad` vs autograd left on;
- SDPA vs eager attention;
- skipping the attention mask when a batch has no padding vs always building it;
- variable-length input vs the paper's 30-s padding (the padding work removed).
"""

import numpy as np
import torch
from common import (
    base_parser,
    build_wavlink,
    interleave,
    markdown,
    median,
    pick_device,
    scale_defaults,
    whisper_processor,
    write_result,
)


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="base")
    parser.add_argument("--clips", type=int, default=None, help="default 12 on CPU, 128 on CUDA")
    parser.add_argument("--batch_size", type=int, default=None, help="default 4 on CPU, 32 on CUDA")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    scale_defaults(args, device, clips=(12, 128), batch_size=(4, 32))
    rng = np.random.default_rng(0)
    lengths = rng.uniform(1.0, 10.0, size=args.clips)
    clips = [(rng.standard_normal(int(s * 16000)) * 0.1).astype(np.float32) for s in lengths]
    processor = whisper_processor()
    sdpa, eager = build_wavlink(args.shape, device=device), build_wavlink(args.shape, device=device, attn="eager")
    eager.load_state_dict(sdpa.state_dict())

    def batches(order, padding="longest"):
        return [
            {
                k: v.to(device)
                for k, v in processor(
                    audio=[clips[i] for i in order[b : b + args.batch_size]], sampling_rate=16000, padding=padding
                ).items()
            }
            for b in range(0, len(order), args.batch_size)
        ]

    arrival = list(range(args.clips))
    by_length = list(np.argsort(-lengths))
    unsorted, bucketed, padded30 = batches(arrival), batches(by_length), batches(by_length, "max_length")
    equal = [
        {"input_features": torch.randn(args.batch_size, 80, 1000, device=device)}
        for _ in range(args.clips // args.batch_size)
    ]
    equal_masked = [
        dict(b, input_features_mask=torch.ones(args.batch_size, 1000, dtype=torch.long, device=device)) for b in equal
    ]

    def run(model, feats, context=torch.inference_mode):
        def go():
            with context():
                for batch in feats:
                    model.get_audio_features(**batch)

        return go

    def forced_mask(feats):
        # what the encoder would cost if it always built and applied a mask (the fast path skipped)
        def go():
            with torch.inference_mode():
                for batch in feats:
                    mask = batch["input_features_mask"].clone()
                    mask[:, -1] = 0  # one padded frame forces the masked path
                    sdpa.get_audio_features(batch["input_features"], mask)

        return go

    variants = {
        "batches in arrival order": run(sdpa, unsorted),
        "length-bucketed batches": run(sdpa, bucketed),
        "autograd on": run(sdpa, bucketed, torch.enable_grad),
        "no_grad": run(sdpa, bucketed, torch.no_grad),
        "inference_mode": run(sdpa, bucketed),
        "eager attention": run(eager, bucketed),
        "sdpa attention": run(sdpa, bucketed),
        "equal lengths, mask built": forced_mask(equal_masked),
        "equal lengths, mask skipped": run(sdpa, equal_masked),
        "30-s padded input": run(sdpa, padded30),
        "variable-length input": run(sdpa, bucketed),
    }
    times = {k: median(v) for k, v in interleave(variants, args.repeats, device).items()}
    padded = lambda bs: float(np.mean([b["input_features"].shape[-1] for b in bs])) / 100  # noqa: E731
    pairs = [
        (
            "batches in arrival order",
            "length-bucketed batches",
            f"mean padded length {padded(unsorted):.1f} s -> {padded(bucketed):.1f} s",
        ),
        ("autograd on", "inference_mode", ""),
        ("no_grad", "inference_mode", ""),
        ("eager attention", "sdpa attention", ""),
        ("equal lengths, mask built", "equal lengths, mask skipped", "batches without padding take the unmasked path"),
        ("30-s padded input", "variable-length input", ""),
    ]
    rows = [
        {
            "optimisation": after,
            "baseline": before,
            "baseline s": times[before],
            "optimised s": times[after],
            "speed-up": times[before] / times[after],
            "note": note,
        }
        for before, after, note in pairs
    ]
    table = markdown(rows, ["optimisation", "baseline", "baseline s", "optimised s", "speed-up", "note"])
    write_result("optimisations", args.out, device, vars(args), rows, table)


if __name__ == "__main__":
    main()
