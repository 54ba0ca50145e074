"""`wavlink-eval`: evaluate a saved or Hub WavLink model on retrieval, zero-shot classification or multiple choice.

    wavlink-eval retrieval --model runs/demo/final --data clotho_evaluation.csv --audio_dir clotho/evaluation
    wavlink-eval zero-shot --model me/wavlink-base --data ESC-50-master --fold 1
    wavlink-eval multiple-choice --model me/wavlink-base --data air_bench.json
    accelerate launch -m wavlink.evaluation retrieval ...      # several processes or GPUs

The model runs on `--device` (default: CUDA if available, else CPU) while `--num_workers` DataLoader workers decode
the audio (default: one per spare CPU core).

Every metric is computed at every Matryoshka dim and written as JSON, a Markdown table and a PNG plot under --out.
"""

import argparse
import logging
import sys

from ..loading import add_device_arguments, add_trust_remote_code_argument
from . import readers, tasks
from .report import write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wavlink-eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    subcommands = parser.add_subparsers(dest="task", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="saved WavLink folder (full model or LoRA run) or Hub id")
    common.add_argument("--data", required=True, help="the evaluation set (file or folder; see the task)")
    common.add_argument("--out", default="eval_results", help="folder for the JSON, Markdown and PNG results")
    common.add_argument(
        "--name", default=None, help="dataset name in reports and the model card (default: from --data)"
    )
    common.add_argument("--batch_size", type=int, default=16, help="clips per batch (texts: 4x)")
    common.add_argument("--dims", type=int, nargs="+", default=None, help="Matryoshka dims to score (default: all)")
    add_trust_remote_code_argument(common)
    add_device_arguments(common)
    common.add_argument(
        "--inference_precision",
        choices=("fp32", "bf16"),
        default=None,
        help="bf16: bfloat16 autocast (fast on CPUs with AMX and on GPUs); default: the model config's",
    )
    common.add_argument("--model_card", action="store_true", help="also write the results into <model>/README.md")
    common.add_argument("--no_progress", action="store_true", help="hide progress bars")

    retrieval = subcommands.add_parser("retrieval", parents=[common], help="text-to-audio and audio-to-text retrieval")
    retrieval.add_argument("--audio_dir", default=None, help="audio folder (default: the table's folder)")
    retrieval.add_argument("--layout", default="auto", choices=["auto", "clotho", "audiocaps", "table"])
    retrieval.add_argument("--audio_column", default="audio")
    retrieval.add_argument("--caption_column", default="caption")
    retrieval.add_argument("--audio_template", default="{youtube_id}.wav", help="AudioCaps file name from a row")

    zero_shot = subcommands.add_parser("zero-shot", parents=[common], help="zero-shot classification")
    zero_shot.add_argument("--layout", default="auto", choices=["auto", "esc50", "us8k", "csv", "folder"])
    zero_shot.add_argument("--fold", type=int, default=None, help="ESC-50/US8K fold to evaluate (default: all)")
    zero_shot.add_argument(
        "--templates",
        nargs="+",
        default=[tasks.DEFAULT_TEMPLATE],
        help="prompt templates with {label}; several are averaged",
    )
    zero_shot.add_argument("--audio_column", default="audio")
    zero_shot.add_argument("--label_column", default="label")

    choice = subcommands.add_parser("multiple-choice", parents=[common], help="AIR-Bench-style multiple choice")
    choice.add_argument("--audio_dir", default=None, help="audio folder (default: the JSON's folder)")
    return parser


def run(args, accelerator=None) -> dict:
    from configuration_wavlink import check_worker_count

    from ..loading import load_model_and_processor, resolve_device

    device = resolve_device(args.device, accelerator)  # before loading: a wrong --device fails at once
    if args.num_workers is not None:
        check_worker_count("--num_workers", args.num_workers)
    model, processor = load_model_and_processor(args.model, trust_remote_code=args.trust_remote_code)
    model.to(device)
    if args.dims:
        bad = [d for d in args.dims if d not in model.config.matryoshka_dims]
        if bad:
            raise ValueError(
                f"--dims {bad} are not Matryoshka sizes of this model; choose from {model.config.matryoshka_dims}."
            )
    options = dict(
        accelerator=accelerator,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        inference_precision=args.inference_precision,
        num_workers=args.num_workers,
        dims=args.dims,
    )
    extra = {}
    if args.task == "retrieval":
        data = readers.read_retrieval_set(
            args.data, args.audio_dir, args.layout, args.audio_column, args.caption_column, args.audio_template
        )
        results = tasks.evaluate_retrieval(model, processor, data.clips, data.captions, **options)
        extra = {"num_clips": len(data.clips), "num_captions": sum(map(len, data.captions))}
    elif args.task == "zero-shot":
        data = readers.read_classification_set(args.data, args.layout, args.fold, args.audio_column, args.label_column)
        results = tasks.evaluate_zero_shot(model, processor, data, templates=args.templates, **options)
        extra = {
            "num_clips": len(data.clips),
            "num_classes": len(data.labels),
            "templates": args.templates,
            "fold": args.fold,
        }
    else:
        data = readers.read_multiple_choice_set(args.data, args.audio_dir)
        results = tasks.evaluate_multiple_choice(model, processor, data, **options)
        extra = {"num_questions": len(data.clips)}
    name = args.name or data.name
    report = {"results": results}
    if accelerator is None or accelerator.is_main_process:
        extra["inference_precision"] = args.inference_precision or model.config.inference_precision
        report.update(write_report(results, args.task, args.out, name, args.model, extra))
        if args.model_card:
            import json

            from ..hub.cards import write_model_card

            record = json.loads(report["json"].read_text())
            report["card"] = write_model_card(args.model, records=[record])
    return report


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from accelerate import Accelerator

    accelerator = Accelerator()
    try:
        report = run(args, accelerator if accelerator.num_processes > 1 else None)
        accelerator.wait_for_everyone()  # finish together, then leave the process group cleanly
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        accelerator.end_training()
    if accelerator.is_main_process:
        print(report["table"])
        print(f"\nresults: {report['json']}\ntable:   {report['markdown']}\nplot:    {report['plot']}")
        if "card" in report:
            print(f"card:    {report['card']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
