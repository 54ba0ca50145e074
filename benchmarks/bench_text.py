"""Text embedding throughput (captions/s) for the CLIP ViT-B/32 text tower and MiniLM-L6 shapes (random weights,
real tokenisation of caption-length text), fp32 and bf16 interleaved."""

import torch
from common import (
    TEXT_SHAPES,
    base_parser,
    build_wavlink,
    interleave,
    markdown,
    median,
    pick_device,
    scale_defaults,
    write_result,
)

from wavlink.training.tokenization import build_word_tokenizer

WORDS = "a dog barks in the distance while rain falls on a metal roof and cars pass by slowly".split()


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=None, help="default 256 on CPU, 4096 on CUDA")
    parser.add_argument("--batch_size", type=int, default=None, help="default 64 on CPU, 512 on CUDA")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    scale_defaults(args, device, captions=(256, 4096), batch_size=(64, 512))
    captions = [" ".join(WORDS[: 6 + i % 12]) for i in range(args.captions)]
    tokenizer = build_word_tokenizer(captions, max_length=77)
    rows = []
    for name, shape in TEXT_SHAPES.items():
        model = build_wavlink("tiny", text_shape=shape, device=device)
        batches = [
            {
                k: v.to(device)
                for k, v in tokenizer(captions[i : i + args.batch_size], padding=True, return_tensors="pt").items()
            }
            for i in range(0, args.captions, args.batch_size)
        ]
        for batch in batches:  # the tiny vocabulary's ids are valid for either tower
            batch.pop("token_type_ids", None)

        def run(precision):
            def go():
                model.config.inference_precision = precision
                with torch.inference_mode():
                    for batch in batches:
                        model.get_text_features(**batch)

            return go

        times = {
            k: median(v)
            for k, v in interleave({"fp32": run("fp32"), "bf16": run("bf16")}, args.repeats, device).items()
        }
        for precision, seconds in times.items():
            rows.append(
                {
                    "text tower": name,
                    "precision": precision,
                    "captions/s": args.captions / seconds,
                    "speed-up vs fp32": times["fp32"] / seconds,
                }
            )
    write_result(
        "text_embedding",
        args.out,
        device,
        vars(args),
        rows,
        markdown(rows, ["text tower", "precision", "captions/s", "speed-up vs fp32"]),
    )


if __name__ == "__main__":
    main()
