"""End to end from audio files: files/s of the WavLink embedding pipeline (decoding in DataLoader workers, batched
log-mel on the model's device) beside the model-only ceiling on the same batches (features made in advance), and the
same for transformers' ClapModel (HTSAT, random weights) from the same files. Then training: samples/s of training
steps fed from the files (workers decode, crop and pad; log-mel on the device) against the same steps on features
made in advance. Variants are interleaved; medians and ratios are reported.

The corpus is made from the real fixture recordings (tiled or cut to 1-30 s), written as wav, flac and mp3 at 16,
22.05, 44.1 and 48 kHz, mono and stereo.

    python benchmarks/bench_end_to_end.py                  # CPU: 24 files, base shape, fp32
    python benchmarks/bench_end_to_end.py --device cuda    # GPU: 3000 files, bf16
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, base_parser, build_wavlink, markdown, median, pick_device, scale_defaults, synchronize
from common import write_result as write_json

sys.path.insert(0, str(ROOT))

from pipeline_wavlink import (  # noqa: E402
    WavLinkEmbeddingPipeline,
    default_num_workers,
    length_sorted_batches,
)
from processing_wavlink import SAMPLE_RATE, audio_duration, load_audio  # noqa: E402

RATES = (16000, 22050, 44100, 48000)
FORMATS = (".wav", ".flac", ".mp3")
CLAP_RATE = 48000


def fixture_sources() -> list[np.ndarray]:
    """The fixture recordings at 16 kHz, or noise where the fixtures are absent."""
    import warnings

    root = Path(os.environ.get("WAVLINK_FIXTURES", ROOT.parent / "shared" / "fixtures")) / "audio"
    files = sorted(root.rglob("*.mp3")) if root.is_dir() else []
    if not files:
        rng = np.random.default_rng(0)
        return [(rng.standard_normal(SAMPLE_RATE * 5) * 0.1).astype(np.float32) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one fixture mp3's header overstates its length by 2%: harmless here
        return [load_audio(str(f), None) for f in files]


def make_corpus(folder: Path, count: int, min_seconds: float, max_seconds: float) -> list[str]:
    """`count` files cycling through formats, rates and channel counts; durations uniform in [min, max] seconds.
    Written by a process pool (mp3 encoding is slow); existing files are kept."""
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    rng, specs = np.random.default_rng(0), []
    for i in range(count):
        rate, suffix, stereo = RATES[i % len(RATES)], FORMATS[i % len(FORMATS)], (i // 2) % 2 == 1
        path = folder / f"clip{i:05d}_{rate}_{'stereo' if stereo else 'mono'}{suffix}"
        specs.append((str(path), i, rate, stereo, int(rng.uniform(min_seconds, max_seconds) * SAMPLE_RATE)))
    todo = [spec for spec in specs if not Path(spec[0]).exists()]
    if todo:
        with ProcessPoolExecutor(initializer=_load_sources) as pool:
            list(pool.map(_write_clip, todo, chunksize=8))
    return [spec[0] for spec in specs]


_SOURCES = []


def _load_sources():
    _SOURCES.extend(fixture_sources())


def _write_clip(spec):
    import soundfile
    import soxr

    path, i, rate, stereo, samples = spec
    source = _SOURCES[i % len(_SOURCES)]
    waveform = np.tile(source, -(-samples // len(source)))[:samples]
    waveform = soxr.resample(waveform, SAMPLE_RATE, rate).astype(np.float32) * 0.9
    if stereo:
        waveform = np.stack([waveform, np.roll(waveform, 100) * 0.7], axis=1)
    soundfile.write(path, waveform, rate)


def log_mel_variants(processor, paths, batch_size, device):
    """Features of the same decoded batches: Whisper's extractor clip by clip (WavLink 0.1's path), and one batched
    STFT per batch on the device (now)."""
    extractor = processor.feature_extractor
    plan = length_sorted_batches([audio_duration(p) for p in paths], batch_size)
    decoded = [[load_audio(paths[i], None) for i in batch] for batch in plan]
    padded = [processor.pad_waveforms(clips) for clips in decoded]

    def per_clip():
        for clips in decoded:
            for clip in clips:
                extractor(clip, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="pt", device=str(device))

    def batched():
        for batch in padded:
            processor.log_mel(**batch, device=device)["input_features"].sum().item()

    return per_clip, batched


def autocast(device, precision):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ------------------------------------------------------------------------------------------------ embedding


def wavlink_embedding(model, processor, paths, batch_size, workers, precision, device):
    """(end-to-end fn, model-only fn) over the same length-sorted batches."""
    pipe = WavLinkEmbeddingPipeline(model=model, processor=processor, device=device)
    plan = length_sorted_batches([audio_duration(p) for p in paths], batch_size)
    made = [processor(audio=[paths[i] for i in batch], feature_device=device) for batch in plan]

    def end_to_end():
        pipe(paths, batch_size=batch_size, num_workers=workers, inference_precision=precision, progress=False)

    def model_only():
        with torch.inference_mode(), autocast(device, precision):
            for features in made:
                model.get_audio_features(**features).pooler_output.float().cpu()

    return end_to_end, model_only


class ClapBatches(torch.utils.data.Dataset):
    """The peer's host work in DataLoader workers too: decode, resample to 48 kHz, CLAP's feature extractor."""

    def __init__(self, extractor, paths, plan):
        self.extractor, self.paths, self.plan = extractor, paths, plan

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, b):
        clips = [load_audio(self.paths[i], None, CLAP_RATE) for i in self.plan[b]]
        return self.extractor(clips, sampling_rate=CLAP_RATE, return_tensors="pt")


def clap_embedding(paths, batch_size, workers, precision, device):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    model = ClapModel(ClapConfig()).to(device).eval()
    extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")  # the "unfused" checkpoints' input
    plan = length_sorted_batches([audio_duration(p) for p in paths], batch_size)
    dataset = ClapBatches(extractor, paths, plan)
    made = [{k: v.to(device) for k, v in dataset[b].items()} for b in range(len(plan))]

    def run(batches):
        with torch.inference_mode(), autocast(device, precision):
            for batch in batches:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                features = model.get_audio_features(input_features=batch["input_features"])
                features.pooler_output.float().cpu()

    def end_to_end():
        pinned = device.type == "cuda"
        prefetch = 4 if workers else None
        run(
            torch.utils.data.DataLoader(dataset, None, num_workers=workers, pin_memory=pinned, prefetch_factor=prefetch)
        )

    return end_to_end, lambda: run(made)


# ------------------------------------------------------------------------------------------------ training


def training(model, processor, paths, batch_size, steps, workers, precision, device, max_seconds):
    """(from-files fn, features-made-in-advance fn): `steps` AdamW steps of the contrastive loss on the same
    batches. From files, workers decode, crop and pad (train.py's dataset and collator); the log-mel is made on the
    device in the step, as train.py does."""
    import datasets

    from train import log_mel_on_device
    from wavlink.training.data import AudioCaptionCollator, AudioCaptionDataset

    captions = [f"the sound of clip {i}" for i in range(len(paths))]
    table = datasets.Dataset.from_dict({"audio": paths, "caption": captions})
    dataset = AudioCaptionDataset(table, max_seconds, seed=0)
    plan = [list(range(i, i + batch_size)) for i in range(0, steps * batch_size, batch_size)]
    collate = AudioCaptionCollator(processor)
    made = []
    for batch in plan:
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate([dataset[i] for i in batch]).items()}
        made.append(inputs | log_mel_on_device(processor, inputs))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def step(batch):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in ("num_bad", "num_samples")}
        if "padded_waveforms" in batch:
            batch.update(log_mel_on_device(processor, batch))
        with autocast(device, precision):
            loss = model(**batch, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def from_files():
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=plan, collate_fn=collate, num_workers=workers,
                                             pin_memory=device.type == "cuda",
                                             prefetch_factor=4 if workers else None)  # fmt: skip
        for batch in loader:
            step(batch)

    def from_features():
        for batch in made:
            step(batch)

    return from_files, from_features


def interleaved(variants: dict, repeats: int, device) -> dict[str, float]:
    for fn in variants.values():  # warm-up (kernels, allocator, file cache)
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: median(t) for name, t in times.items()}


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=None, help="files in the corpus (default 24 on CPU, 3000 CUDA)")
    parser.add_argument("--corpus", default=None, help="folder for the corpus (kept and reused; default: a temp dir)")
    parser.add_argument("--shape", default="base", help="Whisper shape of the audio tower")
    parser.add_argument("--batch_size", type=int, default=None, help="default 8 on CPU, 64 on CUDA")
    parser.add_argument(
        "--num_workers", type=int, default=None, help="decoding workers (default: the library's for the device)"
    )
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: bf16 on CUDA")
    parser.add_argument("--train_steps", type=int, default=None, help="default 2 on CPU, 20 on CUDA")
    parser.add_argument("--train_batch_size", type=int, default=None, help="default 2 on CPU, 32 on CUDA")
    parser.add_argument("--max_seconds", type=float, default=30.0, help="longest clip in the corpus")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    scale_defaults(args, device, files=(24, 3000), batch_size=(8, 64), train_steps=(2, 20), train_batch_size=(2, 32))
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    workers = default_num_workers(device) if args.num_workers is None else args.num_workers
    corpus = Path(args.corpus or tempfile.mkdtemp(prefix="wavlink-e2e-"))
    start = time.perf_counter()
    paths = make_corpus(corpus, args.files, 1.0, args.max_seconds)
    seconds = sum(audio_duration(p) for p in paths)
    print(
        f"corpus: {len(paths)} files, {seconds / 3600:.2f} h of audio in {corpus} ({time.perf_counter() - start:.0f} s)"
    )

    from common import whisper_processor

    processor = whisper_processor([f"the sound of clip {i}" for i in range(len(paths))])
    model = build_wavlink(args.shape, device=device)
    wavlink_e2e, wavlink_model = wavlink_embedding(model, processor, paths, args.batch_size, workers, precision, device)
    clap_e2e, clap_model = clap_embedding(paths, args.batch_size, workers, precision, device)
    per_clip, batched = log_mel_variants(processor, paths, args.batch_size, device)
    times = interleaved(
        {"wavlink e2e": wavlink_e2e, "wavlink model": wavlink_model, "clap e2e": clap_e2e, "clap model": clap_model,
         "log-mel per clip": per_clip, "log-mel batched": batched},
        args.repeats,
        device,
    )  # fmt: skip
    rows = [{
        "task": "log-mel features", "model": f"Whisper extractor per clip -> WavLinkProcessor.log_mel ({device.type})",
        "end-to-end /s": len(paths) / times["log-mel batched"], "model only /s": "",
        "ratio": times["log-mel per clip"] / times["log-mel batched"],
    }]  # fmt: skip
    for name in ("wavlink", "clap"):
        label = f"wavlink ({args.shape})" if name == "wavlink" else "clap htsat (random)"
        rows.append({
            "task": "embedding", "model": label, "precision": precision, "workers": workers,
            "end-to-end /s": len(paths) / times[f"{name} e2e"],
            "model only /s": len(paths) / times[f"{name} model"],
            "ratio": times[f"{name} model"] / times[f"{name} e2e"],
        })  # fmt: skip

    train_paths = paths[: args.train_steps * args.train_batch_size]
    from_files, from_features = training(
        model, processor, train_paths, args.train_batch_size, args.train_steps, workers, precision, device, 30.0
    )
    train_times = interleaved({"files": from_files, "features": from_features}, args.repeats, device)
    samples = args.train_steps * args.train_batch_size
    rows.append({
        "task": "training", "model": f"wavlink ({args.shape})", "precision": precision, "workers": workers,
        "end-to-end /s": samples / train_times["files"], "model only /s": samples / train_times["features"],
        "ratio": train_times["features"] / train_times["files"],
    })  # fmt: skip
    columns = ["task", "model", "precision", "workers", "end-to-end /s", "model only /s", "ratio"]
    rows[0]["end-to-end /s"] = f"{len(paths) / times['log-mel per clip']:.3g} -> {rows[0]['end-to-end /s']:.3g}"
    table = markdown(rows, columns) + (
        f"\n\n{len(paths)} files ({seconds / len(paths):.1f} s mean, 1-{args.max_seconds:.0f} s; wav/flac/mp3 at "
        f"16-48 kHz, mono and stereo); embedding batch {args.batch_size}; training {args.train_steps} steps of "
        f"{args.train_batch_size}. Model only = the same batches with features made in advance on the device. "
        "Ratio = end-to-end / model only (for log-mel: the batched speed-up over per-clip extraction)."
    )
    settings = vars(args) | {"precision": precision, "num_workers": workers, "mean_seconds": seconds / len(paths)}
    write_json("end_to_end", args.out, device, settings, rows, table)


if __name__ == "__main__":
    main()
