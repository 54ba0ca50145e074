"""Every audio input people hand in: the nested processor keyword form, decoder objects from `datasets`, formats
that need FFmpeg (PyAV), 2-D arrays, explicit modality in the pipeline, and loading a saved processor without a
prompt."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import noise, tiny_model, tiny_processor

from pipeline_wavlink import WavLinkEmbeddingPipeline
from processing_wavlink import SAMPLE_RATE, WavLinkProcessor, load_audio


def write_with_av(path, waveform: np.ndarray, rate: int, codec: str, container: str, channels: int = 1):
    """Encode `waveform` (samples,) with FFmpeg through PyAV: how m4a/aac/opus/webm files come to exist."""
    import av

    layout = "mono" if channels == 1 else "stereo"
    planar = np.stack([waveform] * channels).astype(np.float32)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, planar.shape[1], frame_size):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planar[:, start : start + frame_size]), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_nested_keyword_form_equals_the_flat_one():
    processor = tiny_processor()
    clip = noise(1.5, rate=44100)
    flat = processor(audio=[clip], sampling_rate=44100, text=["a dog barks"], padding="longest")
    nested = processor(
        audio=[clip],
        text=["a dog barks"],
        audio_kwargs={"sampling_rate": 44100, "padding": True},
        text_kwargs={"padding": True, "truncation": "longest_first"},
        images_kwargs={},
        videos_kwargs={},
        common_kwargs={"return_tensors": "pt"},
    )
    assert set(nested) == set(flat)
    for key in flat:
        torch.testing.assert_close(nested[key], flat[key], rtol=0, atol=0)
    as_numpy = processor(audio=[clip], audio_kwargs={"sampling_rate": 44100}, common_kwargs={"return_tensors": "np"})
    assert isinstance(as_numpy["input_features"], np.ndarray)
    with pytest.raises(ValueError, match=r"audio_kwargs \['rate'\] are not WavLink audio options"):
        processor(audio=[clip], audio_kwargs={"rate": 44100})
    with pytest.raises(ValueError, match="audio and text only; got images_kwargs"):
        processor(text=["x"], images_kwargs={"size": 224})


def test_decoder_objects_from_datasets_are_accepted_by_duck_type():
    """datasets 4+ with decoding on hands out torchcodec `AudioDecoder`s: anything with `get_all_samples()` giving
    `.data` (channels, samples) and `.sample_rate` is read, so torchcodec itself stays optional."""

    class AudioDecoder:  # torchcodec's interface, as datasets returns it
        __module__ = "torchcodec.decoders._audio_decoder"

        def __init__(self, data, rate):
            self.data, self.rate = data, rate

        def get_all_samples(self):
            return SimpleNamespace(data=self.data, sample_rate=self.rate)

    stereo = torch.from_numpy(np.stack([noise(1.0, 44100), noise(1.0, 44100, seed=1)]))
    expected = load_audio({"array": stereo.numpy(), "sampling_rate": 44100}, None)
    np.testing.assert_array_equal(load_audio(AudioDecoder(stereo, 44100), None), expected)
    processor = tiny_processor()
    torch.testing.assert_close(
        processor(audio=[AudioDecoder(stereo, 44100)])["input_features"],
        processor(audio=[expected], sampling_rate=SAMPLE_RATE)["input_features"],
    )

    class Broken(AudioDecoder):
        def get_all_samples(self):
            raise RuntimeError("could not read the stream")

    with pytest.raises(ValueError, match=r"audio\[0\]: cannot decode audio \(RuntimeError: could not read"):
        processor(audio=[Broken(stereo, 44100)])


@pytest.mark.parametrize(
    "suffix, codec, container, rate",
    [(".m4a", "aac", "ipod", 44100), (".aac", "aac", "adts", 48000), (".opus", "libopus", "ogg", 48000),
     (".webm", "libopus", "webm", 48000)],
)  # fmt: skip
def test_ffmpeg_formats_decode_through_pyav(tmp_path, suffix, codec, container, rate):
    pytest.importorskip("av")
    import soxr

    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(2.0 * rate)) / rate)).astype(np.float32)
    path = tmp_path / f"tone{suffix}"
    write_with_av(path, tone, rate, codec, container, channels=2)
    decoded = load_audio(str(path), None)
    reference = soxr.resample(tone, rate, SAMPLE_RATE)
    assert abs(len(decoded) - len(reference)) < 0.1 * SAMPLE_RATE  # codec priming and padding: a few ms
    # a lossy codec gives the same tone, not the same samples: same pitch and loudness over the middle second
    middle = decoded[SAMPLE_RATE // 2 : SAMPLE_RATE * 3 // 2]
    assert np.argmax(np.abs(np.fft.rfft(middle))) == 440  # 1-Hz bins over one second
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(np.sqrt(np.mean(reference**2)), rel=0.1)
    with open(path, "rb") as handle:  # bytes, named by their path, as datasets gives them
        from_bytes = load_audio({"bytes": handle.read(), "path": f"x{suffix}"}, None)
    np.testing.assert_array_equal(from_bytes, decoded)


def test_ffmpeg_formats_without_pyav_name_the_file_and_the_install(tmp_path, monkeypatch):
    path = tmp_path / "voice.m4a"
    path.write_bytes(b"\x00\x00\x00\x18ftypM4A ")
    monkeypatch.setitem(sys.modules, "av", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"audio\[0\] \(.*voice\.m4a\): \.m4a files are decoded by PyAV.*pip install"):
        tiny_processor()(audio=[str(path)])


def test_index_and_eval_folders_pick_up_ffmpeg_formats(tmp_path):
    pytest.importorskip("av")
    from wavlink.evaluation.readers import read_classification_set
    from wavlink.search.index import find_audio

    for label in ("tone", "hum"):
        (tmp_path / label).mkdir()
        write_with_av(tmp_path / label / "a.m4a", noise(1.0, 44100), 44100, "aac", "ipod")
        write_with_av(tmp_path / label / "b.opus", noise(1.0, 48000), 48000, "libopus", "ogg")
    assert sorted(p.name for p in find_audio(tmp_path)) == ["a.m4a", "a.m4a", "b.opus", "b.opus"]
    assert len(read_classification_set(str(tmp_path), "folder").clips) == 4


def test_a_2d_array_is_a_batch_given_directly_and_one_clip_inside_a_list():
    processor = tiny_processor()
    clips = [noise(1.0, seed=i) for i in range(4)]
    as_batch = processor(audio=np.stack(clips), sampling_rate=SAMPLE_RATE)
    torch.testing.assert_close(
        as_batch["input_features"], processor(audio=clips, sampling_rate=16000)["input_features"]
    )
    assert as_batch["input_features"].shape[0] == 4  # not one clip averaged from four "channels"
    stereo = np.stack([clips[0], clips[1]])  # (2, samples) in a list: one stereo clip, downmixed
    torch.testing.assert_close(
        processor(audio=[stereo], sampling_rate=SAMPLE_RATE)["input_features"],
        processor(audio=[(clips[0] + clips[1]) / 2], sampling_rate=SAMPLE_RATE)["input_features"],
    )
    with pytest.raises(ValueError, match=r"audio\[0\]: a 2-D array here is one multi-channel clip.*\(10, 16000\)"):
        processor(audio=[np.stack([noise(1.0, seed=i) for i in range(10)])], sampling_rate=SAMPLE_RATE)


def test_the_pipeline_reads_modality_without_guessing_from_names(tmp_path):
    import soundfile

    pipe = WavLinkEmbeddingPipeline(model=tiny_model(), processor=tiny_processor(), device=-1)
    wav = tmp_path / "bark.wav"
    soundfile.write(wav, noise(1.0), SAMPLE_RATE)
    np.testing.assert_allclose(pipe(str(wav)), pipe(audio=str(wav)), atol=1e-6)  # an existing file is audio
    np.testing.assert_allclose(pipe("a dog barks"), pipe(text="a dog barks"), atol=1e-6)
    with pytest.raises(ValueError, match=r"'x\.m4a'.*looks like an audio file, but no such file exists"):
        pipe("x.m4a")  # used to embed the file *name* as text
    np.testing.assert_allclose(pipe("x.m4a", modality="text"), pipe(text="x.m4a"), atol=1e-6)
    with pytest.raises(ValueError, match="mix audio and text"):
        pipe([str(wav), "a dog barks"])
    with pytest.raises(ValueError, match="modality='video' is not one of"):
        pipe("a dog", modality="video")
    batch = np.stack([noise(1.0, seed=i) for i in range(3)])
    np.testing.assert_allclose(pipe(batch, sampling_rate=SAMPLE_RATE), pipe(list(batch), sampling_rate=SAMPLE_RATE))


def test_a_saved_processor_loads_with_its_own_class_without_asking(tmp_path, monkeypatch):
    processor = tiny_processor()
    tiny_model().save_pretrained(tmp_path)  # config.json with auto_map: the Auto classes would ask to run its code
    processor.save_pretrained(tmp_path)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked whether to run the folder's code"))
    loaded = WavLinkProcessor.from_pretrained(tmp_path)
    clip = noise(1.0)
    torch.testing.assert_close(loaded(audio=[clip], sampling_rate=16000)["input_features"],
                               processor(audio=[clip], sampling_rate=16000)["input_features"])  # fmt: skip
