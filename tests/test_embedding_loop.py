"""The path from audio files to embeddings: batched log-mel on the model's device, decoding in DataLoader workers,
device selection, and the pipeline over datasets and generators."""

import warnings

import numpy as np
import pytest
import soundfile
import torch
from conftest import noise, tiny_model, tiny_processor
from transformers import WhisperFeatureExtractor

from pipeline_wavlink import WavLinkEmbeddingPipeline, iter_audio_embeddings
from processing_wavlink import SAMPLE_RATE, TruncatedAudioWarning, load_audio, split_windows

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def varied_clips() -> list[np.ndarray]:
    """Lengths from 12 ms to 70 s (split into three windows), and loudness 60 dB apart: in one batch, a batch-global
    dynamic-range clamp (max - 8) would flatten the quiet clip."""
    rng = np.random.default_rng(0)
    sizes_and_gains = [(16000, 1.0), (3333, 1e-3), (480000, 0.3), (1_120_000, 1.0), (201, 1.0), (47_999, 0.05)]
    return [(rng.standard_normal(n) * gain).astype(np.float32) for n, gain in sizes_and_gains]


def stock_features(extractor, clip) -> list[np.ndarray]:
    """Whisper's own feature extractor, one window at a time: the reference."""
    windows = split_windows(clip, extractor.n_samples, SAMPLE_RATE)
    return [
        extractor(w, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="np")["input_features"][0]
        for w in windows
    ]


def check_equal_to_stock(batch, extractor, clips, atol):
    row = 0
    for clip in clips:
        for reference in stock_features(extractor, clip):
            frames = reference.shape[-1]
            features = batch["input_features"][row].cpu().numpy()
            assert int(batch["input_features_mask"][row].sum()) == frames
            np.testing.assert_allclose(features[:, :frames], reference, atol=atol, rtol=0)
            assert not features[:, frames:].any()  # padding frames are zeros
            row += 1
    assert row == batch["input_features"].shape[0]


def test_batched_log_mel_equals_whisper_per_clip():
    extractor = WhisperFeatureExtractor(feature_size=80)
    processor = tiny_processor()
    clips = varied_clips()
    batch = processor(audio=clips, sampling_rate=SAMPLE_RATE)
    check_equal_to_stock(batch, extractor, clips, atol=1e-5)
    assert batch["audio_window_counts"].tolist() == [1, 1, 1, 3, 1, 1]
    # the single STFT over the whole padded batch, which accelerators run, computed here on the CPU
    padded = processor.pad_waveforms(clips)
    one_call = processor.log_mel(padded["padded_waveforms"], padded["waveform_lengths"], per_window=False)
    check_equal_to_stock(one_call, extractor, clips, atol=1e-5)
    # the set exercises the per-clip clamp: a batch-global floor (loudest max - 8) would cut into the quiet clip
    log10 = batch["input_features"] * 4 - 4
    quiet = log10[1, :, : int(batch["input_features_mask"][1].sum())]
    assert float(quiet.min()) < float(log10.max()) - 8
    # the paper's 30-s input: every window zero-padded to 30 s first, exactly as the stock extractor pads
    padded = processor(audio=clips[:2], sampling_rate=SAMPLE_RATE, padding="max_length")
    reference = extractor(clips[:2], sampling_rate=SAMPLE_RATE, padding="max_length", return_tensors="np")
    np.testing.assert_allclose(padded["input_features"].numpy(), reference["input_features"], atol=1e-5, rtol=0)
    assert "input_features_mask" not in padded


@pytest.mark.fixtures
def test_batched_log_mel_on_real_recordings(fixtures, animal_files):
    extractor = WhisperFeatureExtractor.from_pretrained(fixtures / "whisper-tiny.en")
    clips = [load_audio(f, None) for f in animal_files]  # mp3, mono and stereo, 44.1/48 kHz
    processor = tiny_processor()
    processor.feature_extractor = extractor
    check_equal_to_stock(processor(audio=clips, sampling_rate=SAMPLE_RATE), extractor, clips, atol=1e-5)


@CUDA
def test_batched_log_mel_on_cuda_equals_cpu():
    processor = tiny_processor()
    clips = varied_clips()
    on_cpu = processor(audio=clips, sampling_rate=SAMPLE_RATE)
    on_gpu = processor(audio=clips, sampling_rate=SAMPLE_RATE, feature_device="cuda")
    assert on_gpu["input_features"].device.type == "cuda"
    torch.testing.assert_close(on_gpu["input_features"].cpu(), on_cpu["input_features"], atol=1e-5, rtol=0)


def embed_each_alone_and_together(model, device):
    processor = tiny_processor()
    model = model.to(device)
    clips = [{"array": c, "sampling_rate": SAMPLE_RATE} for c in varied_clips()]
    together = np.zeros((len(clips), model.config.projection_dim), np.float32)
    for batch in iter_audio_embeddings(model, processor, clips, batch_size=len(clips), num_workers=0):
        together[batch.indices] = batch.embeds
    alone = np.concatenate(
        [next(iter_audio_embeddings(model, processor, [c], batch_size=1, num_workers=0)).embeds for c in clips]
    )
    return together, alone


def test_a_clip_embeds_the_same_in_a_batch_as_alone():
    together, alone = embed_each_alone_and_together(tiny_model(), "cpu")
    assert np.abs(together - alone).max() <= 1e-4


@CUDA
def test_a_clip_embeds_the_same_in_a_batch_as_alone_on_cuda():
    together, alone = embed_each_alone_and_together(tiny_model(), "cuda")
    assert np.abs(together - alone).max() <= 1e-4


def write_clips(folder, count=10):
    """Real files in several formats, rates and channel counts."""
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        rate = (16000, 22050, 44100, 48000)[i % 4]
        suffix = (".wav", ".flac", ".mp3")[i % 3]
        waveform = noise(0.5 + 0.3 * i, rate, seed=i)
        if i % 2:
            waveform = np.stack([waveform, 0.5 * waveform], axis=1)  # stereo
        path = folder / f"clip{i:02d}{suffix}"
        soundfile.write(path, waveform, rate)
        paths.append(str(path))
    return paths


@pytest.fixture
def pipe():
    return WavLinkEmbeddingPipeline(model=tiny_model(), processor=tiny_processor(), device=-1)


def test_workers_give_the_same_embeddings_in_input_order(pipe, tmp_path):
    paths = write_clips(tmp_path / "clips")
    in_process = pipe(paths, batch_size=3, num_workers=0)
    with_workers = pipe(paths, batch_size=3, num_workers=2)
    np.testing.assert_allclose(with_workers, in_process, atol=1e-6)
    # and each row is the file embedded alone: the output is in input order
    np.testing.assert_allclose(pipe(paths[7]), in_process[7], atol=1e-4)


def test_workers_report_bad_files_by_name(pipe, tmp_path):
    paths = write_clips(tmp_path / "clips", 6)
    corrupt = tmp_path / "clips" / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(ValueError, match=r"audio\[4\] \(.*corrupt\.wav\): cannot decode"):
        pipe(paths[:4] + [str(corrupt)] + paths[4:], batch_size=2, num_workers=2)
    # where a tool skips, every bad file is counted and named, and the good ones are still embedded
    batches = list(
        iter_audio_embeddings(
            pipe.model, pipe.processor, [str(corrupt)] + paths + [str(corrupt)], batch_size=2, num_workers=2,
            on_error="skip",
        )
    )  # fmt: skip
    failures = [f for b in batches for f in b.failures]
    assert len(failures) == 2 and all("corrupt.wav" in f for f in failures)
    assert sorted(i for b in batches for i in b.indices) == list(range(1, 7))


@pytest.mark.fixtures
def test_a_worker_warning_reaches_the_caller(pipe, fixtures, tmp_path):
    paths = write_clips(tmp_path / "clips", 4)
    truncated = tmp_path / "clips" / "cut.mp3"
    data = (fixtures / "audio" / "animals" / "owl.mp3").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe(paths + [str(truncated)], batch_size=2, num_workers=2)
    assert any(issubclass(w.category, TruncatedAudioWarning) and "cut.mp3" in str(w.message) for w in caught)


def test_pipe_on_a_dataset_a_column_and_a_generator_equals_the_list_call(pipe, tmp_path):
    import datasets

    paths = write_clips(tmp_path / "clips", 7)
    expected = pipe(paths, batch_size=2, num_workers=0)
    table = datasets.Dataset.from_dict({"audio": paths, "id": list(range(7))}).cast_column("audio", datasets.Audio())
    np.testing.assert_allclose(pipe(table, batch_size=2, num_workers=1), expected, atol=1e-6)
    np.testing.assert_allclose(pipe(table["audio"], batch_size=2, num_workers=0), expected, atol=1e-6)
    streamed = pipe((p for p in paths), batch_size=2)
    assert not isinstance(streamed, np.ndarray)  # a generator in, a generator out
    np.testing.assert_allclose(np.stack(list(streamed)), expected, atol=1e-6)
    arrays = [{"array": load_audio(p, None), "sampling_rate": SAMPLE_RATE} for p in paths]
    np.testing.assert_allclose(np.stack(list(pipe(iter(arrays), batch_size=2))), expected, atol=1e-4)
    texts = pipe(text=["a dog barks", "rain falls softly"])
    np.testing.assert_allclose(np.stack(list(pipe(t for t in ["a dog barks", "rain falls softly"]))), texts, atol=1e-6)


def test_device_selection():
    from wavlink.loading import resolve_device

    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device 'potato'"):
        resolve_device("potato")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            resolve_device("cuda")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@CUDA
def test_the_pipeline_and_the_loop_run_on_cuda(tmp_path):
    paths = write_clips(tmp_path / "clips", 5)
    on_cpu = WavLinkEmbeddingPipeline(model=tiny_model(), processor=tiny_processor(), device=-1)(paths)
    pipe = WavLinkEmbeddingPipeline(model=tiny_model(), processor=tiny_processor(), device=0)
    assert pipe.model.device.type == "cuda"
    np.testing.assert_allclose(pipe(paths, num_workers=2), on_cpu, atol=1e-4)
