import io

import numpy as np
import pytest
import soundfile
import soxr
import torch
from conftest import noise, tiny_processor
from transformers import WhisperFeatureExtractor

from processing_wavlink import load_audio


def _tone(seconds=1.0, rate=16000, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize(
    "fmt, ext, subtype",
    [("WAV", "wav", "PCM_16"), ("FLAC", "flac", "PCM_16"), ("OGG", "ogg", "VORBIS"), ("MP3", "mp3", "MPEG_LAYER_III")],
)
def test_file_formats_decode(tmp_path, fmt, ext, subtype):
    path = tmp_path / f"tone.{ext}"
    soundfile.write(path, _tone(1.0, 22050), 22050, format=fmt, subtype=subtype)
    waveform = load_audio(str(path), None)
    assert waveform.dtype == np.float32 and abs(waveform.shape[0] - 16000) < 1200  # mp3 adds encoder padding
    assert 0.2 < np.abs(waveform).max() < 0.7


def test_resampling_matches_soxr_and_stereo_is_downmixed():
    left, right = _tone(1.0, 44100, 440), _tone(1.0, 44100, 660)
    stereo_samples_first = np.stack([left, right], axis=1)  # (samples, channels) as soundfile gives
    stereo_channels_first = stereo_samples_first.T  # (channels, samples) as torchaudio gives
    expected = soxr.resample((left + right) / 2, 44100, 16000, quality="HQ")
    for clip in (stereo_samples_first, stereo_channels_first, torch.from_numpy(stereo_channels_first.copy())):
        np.testing.assert_allclose(load_audio(clip, 44100), expected, atol=1e-6)


def test_integer_pcm_is_scaled():
    pcm = (_tone() * 32768).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm, 16000), pcm / 32768.0, atol=1e-7)
    unsigned = (pcm.astype(np.int32) // 256 + 128).astype(np.uint8)
    np.testing.assert_allclose(load_audio(unsigned, 16000), (unsigned.astype(np.float64) - 128) / 128.0, atol=1e-7)


def test_datasets_style_dicts(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, _tone(), 16000)
    expected = load_audio(str(path), None)
    np.testing.assert_array_equal(load_audio({"path": str(path)}, None), expected)
    np.testing.assert_array_equal(load_audio({"bytes": path.read_bytes(), "path": "ignored.wav"}, None), expected)
    np.testing.assert_array_equal(load_audio({"array": expected, "sampling_rate": 16000}, None), expected)


@pytest.mark.parametrize(
    "audio, kwargs, message",
    [
        ([noise(1.0), np.zeros(0, dtype=np.float32)], {"sampling_rate": 16000}, r"audio\[1\]: audio is empty"),
        (
            [np.array([0.1, np.nan] * 800, dtype=np.float32)],
            {"sampling_rate": 16000},
            r"audio\[0\]: audio contains NaN",
        ),
        (
            [noise(1.0), np.array([np.inf] * 1600, dtype=np.float32)],
            {"sampling_rate": 16000},
            r"audio\[1\].*NaN or Inf",
        ),
        ([noise(1.0)], {}, r"audio\[0\]: a raw array needs `sampling_rate`"),
        (["/nonexistent/clip.wav"], {}, r"audio\[0\] \(/nonexistent/clip.wav\): cannot decode"),
        ([noise(1.0), 3.5], {"sampling_rate": 16000}, r"audio\[1\]: unsupported audio type float"),
        ([{"array": noise(1.0)}], {}, r"audio\[0\]: dict has 'array' but no 'sampling_rate'"),
        ([noise(0.001)], {"sampling_rate": 16000}, r"audio\[0\]: audio is shorter than 10 ms"),
    ],
)
def test_bad_audio_is_named(audio, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_processor()(audio=audio, **kwargs)


def test_corrupt_file_is_named(tmp_path):
    bad = tmp_path / "corrupt.flac"
    bad.write_bytes(b"fLaC" + b"\x00garbage" * 20)
    with pytest.raises(ValueError, match="corrupt.flac"):
        tiny_processor()(audio=[str(bad)])


def test_max_length_padding_is_the_stock_whisper_input():
    processor = tiny_processor()
    clips = [noise(1.0), noise(3.3, seed=1)]
    batch = processor(audio=clips, sampling_rate=16000, padding="max_length")
    stock = WhisperFeatureExtractor(feature_size=80)(clips, sampling_rate=16000, return_tensors="pt")
    assert "input_features_mask" not in batch and batch["input_features"].shape == (2, 80, 3000)
    torch.testing.assert_close(batch["input_features"], stock["input_features"])


def test_longest_padding_features_equal_each_clip_alone():
    processor = tiny_processor()
    clips = [noise(1.0), noise(3.3, seed=1)]
    batch = processor(audio=clips, sampling_rate=16000)
    assert batch["input_features"].shape == (2, 80, 330) and batch["input_features_mask"].sum(1).tolist() == [100, 330]
    alone = processor(audio=clips[0], sampling_rate=16000)["input_features"]
    torch.testing.assert_close(batch["input_features"][:1, :, :100], alone)


def test_long_audio_windows_or_truncation():
    processor = tiny_processor()
    clip = noise(70.5, seed=2)  # 30 + 30 + 10.5 s
    windows = processor(audio=[clip, noise(2.0)], sampling_rate=16000)
    assert windows["audio_window_counts"].tolist() == [3, 1] and windows["input_features"].shape[0] == 4
    truncated = processor(audio=[clip, noise(2.0)], sampling_rate=16000, long_audio="truncate")
    assert "audio_window_counts" not in truncated and truncated["input_features"].shape == (2, 80, 3000)
    # a trailing remainder under one second is dropped rather than embedded as a near-empty window
    assert processor(audio=noise(60.5), sampling_rate=16000)["audio_window_counts"].tolist() == [2]


def test_text_is_truncated_to_the_tokenizer_limit():
    processor = tiny_processor()
    batch = processor(text=["a dog barks " * 100, "rain"])
    assert batch["input_ids"].shape[1] == processor.tokenizer.model_max_length
    with pytest.raises(ValueError, match=r"text\[1\]"):
        processor(text=["ok", 3])


def test_audio_and_text_masks_do_not_collide():
    batch = tiny_processor()(audio=[noise(1.0)], sampling_rate=16000, text=["a dog barks", "rain"])
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["input_features_mask"].shape == (1, 100)


@pytest.mark.fixtures
def test_real_recordings(real_processor, animal_files):
    batch = real_processor(audio=animal_files)
    lengths = batch["input_features_mask"].sum(1)
    info = {f.split("/")[-1]: soundfile.info(f).duration for f in animal_files}
    # 100 mel frames per second, within the decoder's padding of a few frames
    assert all(abs(int(n) - 100 * d) < 10 for n, d in zip(lengths, info.values()))
    raw = io.BytesIO(open(animal_files[3], "rb").read())  # duck: stereo 44.1 kHz
    np.testing.assert_array_equal(load_audio({"bytes": raw.getvalue()}, None), load_audio(animal_files[3], None))


def test_inputs_that_used_to_pass_silently_or_crash_get_named_errors():
    import torch

    processor = tiny_processor()
    with pytest.raises(ValueError, match="text is an empty list"):
        processor(text=[])
    for rate in ("16000", 16000.7):
        with pytest.raises(ValueError, match=r"audio\[0\]: sampling_rate must be a"):
            processor(audio=[noise(0.5)], sampling_rate=rate)
    with pytest.raises(ValueError, match=r"audio\[1\]: sampling_rate must be a whole number"):
        processor(audio=[noise(0.5), {"array": noise(0.5), "sampling_rate": 8000.5}], sampling_rate=16000)
    # whole-number floats are fine, and half-precision tensors are widened rather than refused
    expected = processor(audio=[noise(0.5)], sampling_rate=16000)["input_features"]
    got = processor(audio=[torch.from_numpy(noise(0.5)).bfloat16()], sampling_rate=16000.0)["input_features"]
    assert got.shape == expected.shape and (got - expected).abs().max() < 0.05


def test_a_truncated_file_warns_with_its_name_and_is_bad_in_training(fixtures, tmp_path):
    import warnings

    from processing_wavlink import TruncatedAudioWarning, load_audio
    from wavlink.training.data import AudioCaptionDataset, load_caption_table

    data = (fixtures / "audio" / "animals" / "owl.mp3").read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[: len(data) // 2])
    with pytest.warns(TruncatedAudioWarning, match=r"cut.mp3\): decoded 4.22 s of the 8.50 s its header announces"):
        processor = tiny_processor()
        processor(audio=[str(tmp_path / "cut.mp3")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedAudioWarning)
        load_audio(str(fixtures / "audio" / "animals" / "owl.mp3"), None)  # the whole file: no warning
    (tmp_path / "owl.mp3").write_bytes(data)
    (tmp_path / "t.csv").write_text("audio,caption\ncut.mp3,an owl\nowl.mp3,an owl again\n")
    item = AudioCaptionDataset(load_caption_table(str(tmp_path / "t.csv")), max_seconds=2.0)[0]
    assert item["bad"] == 1 and "looks truncated" in item["errors"][0] and item["caption"] == "an owl again"
