"""WavLink processor: Whisper log-mel features for audio, the text tower's tokenizer for text.

Served from the Hub as remote code: imports only torch, numpy, transformers and sibling modules at the top level.
The audio libraries (soundfile for decoding, soxr for resampling) are imported when first needed.
"""

import io
import os
import warnings

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature, WhisperFeatureExtractor
from transformers.processing_utils import ProcessorMixin

# Whisper's feature rate: every clip is resampled to it.
SAMPLE_RATE = 16000
# A decoded file may fall this share short of the length its header announces before it counts as truncated.
TRUNCATION_TOLERANCE = 0.02
# Files decoded by soundfile's bundled libsndfile.
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
# Files decoded by PyAV (its bundled FFmpeg), the optional `av` extra.
FFMPEG_SUFFIXES = (".m4a", ".aac", ".opus", ".webm")
AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES + FFMPEG_SUFFIXES
FFMPEG_INSTALL = "pip install 'wavlink[av]' (or: pip install av)"
# A 2-D array inside a list or dict is one multi-channel clip; more channels than this on its short axis is refused.
MAX_CHANNELS = 8
AUDIO_PADDING = ("longest", "max_length")
LONG_AUDIO = ("windows", "truncate")
# A trailing window shorter than this is dropped when a long clip is split (it would add noise, not content).
MIN_TRAILING_WINDOW_SECONDS = 1.0


class TruncatedAudioWarning(UserWarning):
    """A file decoded to less audio than its header announces (a partial download or copy)."""


class WavLinkProcessor(ProcessorMixin):
    r"""
    Turns audio and text into model inputs for [`WavLinkModel`].

    Audio may be file paths (wav, flac, ogg, mp3), numpy or torch arrays (with `sampling_rate`), or
    datasets-style dicts (`{"array", "sampling_rate"}` or `{"path"}` / `{"bytes"}`). Every clip is decoded, downmixed
    to mono, scaled to [-1, 1] if it is integer PCM, resampled to 16 kHz and turned into Whisper log-mel features.

    Args:
        feature_extractor (`WhisperFeatureExtractor`): computes the log-mel features.
        tokenizer (`PreTrainedTokenizerBase`): the text tower's tokenizer.
    """

    def __init__(self, feature_extractor, tokenizer):
        super().__init__(feature_extractor, tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "WavLinkProcessor":
        """Load a saved processor (folder or Hub id). The feature extractor and the tokenizer are loaded with their
        own stock classes, so this never asks to run code from the folder, and `trust_remote_code` is not needed."""
        kwargs.pop("trust_remote_code", None)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        # The tokenizer's own class, by name: `AutoTokenizer` would read the folder's config.json, whose `auto_map`
        # asks to run the folder's code.
        from transformers.models.auto.tokenization_auto import get_tokenizer_config, tokenizer_class_from_name

        name = get_tokenizer_config(pretrained_model_name_or_path, **kwargs).get("tokenizer_class")
        tokenizer_class = (tokenizer_class_from_name(name) if name else None) or AutoTokenizer
        tokenizer = tokenizer_class.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls(feature_extractor, tokenizer)

    @classmethod
    def from_towers(cls, audio_tower: str, text_tower: str, **kwargs) -> "WavLinkProcessor":
        """The processor matching `WavLinkModel.from_towers(audio_tower, text_tower)` (Hub ids or local paths)."""
        feature_extractor = WhisperFeatureExtractor.from_pretrained(audio_tower, **kwargs)
        # The stock zero-shot-audio-classification pipeline forwards every feature-extractor output to the model;
        # an audio `attention_mask` there would clash with the text one.
        feature_extractor.return_attention_mask = False
        tokenizer = AutoTokenizer.from_pretrained(text_tower, **kwargs)
        return cls(feature_extractor, tokenizer)

    def __call__(
        self,
        audio=None,
        text: str | list[str] | None = None,
        sampling_rate: int | None = None,
        padding: str | bool = "longest",
        long_audio: str = "windows",
        return_tensors: str | None = "pt",
        feature_device: str | None = None,
        *,
        text_kwargs: dict | None = None,
        audio_kwargs: dict | None = None,
        common_kwargs: dict | None = None,
        images_kwargs: dict | None = None,
        videos_kwargs: dict | None = None,
        **flat_text_kwargs,
    ) -> BatchFeature:
        """
        Args:
            audio: one clip or a list of clips (see the class docstring for the accepted forms). A 2-D array given
                directly is a batch, one clip per row, as Whisper's feature extractor reads it.
            text: one string or a list of strings. Truncated to the tokenizer's limit.
            sampling_rate: sampling rate of raw arrays (required for them; files and dicts carry their own).
            padding: `"longest"` (default, or True) pads log-mel frames to the longest clip and returns
                `input_features_mask`; `"max_length"` pads every clip to 30 s, the paper's exact Whisper input, with
                no mask.
            long_audio: audio longer than 30 s is split into 30-s `"windows"` (the model averages their embeddings;
                `audio_window_counts` says how many windows each clip has) or `"truncate"`d to its first 30 s.
            return_tensors: `"pt"` (default) or `"np"`.
            feature_device: compute the log-mel spectrograms with torch on this device (e.g. `"cuda"`); default CPU.
            text_kwargs, audio_kwargs, common_kwargs: the nested form transformers v5 processors take (and
                sentence-transformers uses): `audio_kwargs` may hold `sampling_rate`, `padding`, `long_audio`,
                `feature_device`; `text_kwargs` goes to the tokenizer; `common_kwargs` may hold `return_tensors`.
                They override the flat arguments.
            flat_text_kwargs: passed on to the tokenizer.

        Returns:
            `BatchFeature` with `input_features` `(windows, mel_bins, frames)`, `input_features_mask`
            `(windows, frames)` (padding="longest" only), `audio_window_counts` `(clips,)` (only when a clip was split),
            and the tokenizer's `input_ids`, `attention_mask` (and `token_type_ids`).
        """
        if audio is None and text is None:
            raise ValueError("WavLinkProcessor needs `audio`, `text` or both.")
        for name, unused in (("images_kwargs", images_kwargs), ("videos_kwargs", videos_kwargs)):
            if unused:
                raise ValueError(f"WavLinkProcessor takes audio and text only; got {name}={unused!r}.")
        audio_options = {"sampling_rate": sampling_rate, "padding": padding, "long_audio": long_audio,
                         "feature_device": feature_device}  # fmt: skip
        unknown = set(audio_kwargs or {}) - set(audio_options)
        if unknown:
            raise ValueError(
                f"audio_kwargs {sorted(unknown)} are not WavLink audio options; allowed: {sorted(audio_options)}."
            )
        audio_options.update(audio_kwargs or {})
        common = dict(common_kwargs or {})
        return_tensors = common.pop("return_tensors", return_tensors)
        text_options = {**flat_text_kwargs, **common, **(text_kwargs or {})}
        data = {}
        if text is not None:
            data.update(self._tokenize(text, return_tensors, **text_options))
        if audio is not None:
            features = self._featurize(
                audio,
                audio_options["sampling_rate"],
                "longest" if audio_options["padding"] is True else audio_options["padding"],
                audio_options["long_audio"],
                audio_options["feature_device"] or "cpu",
            )
            if return_tensors != "pt":
                features = {k: v.cpu().numpy() for k, v in features.items()}
            data.update(features)
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ text

    def _tokenize(self, text, return_tensors, **text_kwargs) -> dict:
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)):
            texts = list(text)
        else:
            raise ValueError(f"text must be a string or a list of strings, got {type(text).__name__}.")
        if not texts:
            raise ValueError("text is an empty list: give at least one string.")
        for index, item in enumerate(texts):
            if not isinstance(item, str):
                raise ValueError(f"text[{index}] must be a string, got {type(item).__name__}.")
        max_length = self.tokenizer.model_max_length
        if max_length is None or max_length > 100_000:  # "unlimited" sentinel of tokenizers without a limit
            max_length = 512
        kwargs = {"padding": True, "truncation": True, "max_length": max_length, **text_kwargs}
        return dict(self.tokenizer(texts, return_tensors=return_tensors, **kwargs))

    # ------------------------------------------------------------------ audio

    def _featurize(self, audio, sampling_rate, padding, long_audio, device) -> dict:
        if is_array(audio) and getattr(audio, "ndim", 1) == 2:
            audio = list(audio)  # a 2-D array given directly is a batch, one clip per row (as Whisper reads it)
        clips = audio if _is_batch(audio) else [audio]
        if len(clips) == 0:
            raise ValueError("audio is an empty list.")
        names = [describe_audio(clip, f"audio[{index}]") for index, clip in enumerate(clips)]
        waveforms = [load_audio(clip, sampling_rate, SAMPLE_RATE, name=name) for clip, name in zip(clips, names)]
        padded = self.pad_waveforms(waveforms, padding, long_audio)
        return self.log_mel(**padded, device=device, with_mask=padding == "longest")

    def pad_waveforms(self, waveforms: list[np.ndarray], padding: str = "longest", long_audio: str = "windows") -> dict:
        """The host half of featurisation (cheap, run in DataLoader workers): 16-kHz clips cut into 30-s windows and
        padded into one tensor for a single batched STFT in `log_mel`.

        Each window is reflect-padded by half an STFT frame on both sides, as Whisper's centred STFT does, *before*
        the windows are zero-padded to a common length: every frame a clip keeps then sees only its own samples, so
        its features do not depend on the batch.

        Returns `padded_waveforms` `(windows, samples + n_fft)` float32, `waveform_lengths` `(windows,)` and, when a
        clip was split, `audio_window_counts` `(clips,)`.
        """
        if padding not in AUDIO_PADDING:
            raise ValueError(f"padding={padding!r} is not valid; allowed values: {AUDIO_PADDING}.")
        if long_audio not in LONG_AUDIO:
            raise ValueError(f"long_audio={long_audio!r} is not valid; allowed values: {LONG_AUDIO}.")
        extractor = self.feature_extractor
        window = extractor.n_samples
        windows, counts = [], []
        for waveform in waveforms:
            pieces = split_windows(waveform, window, int(MIN_TRAILING_WINDOW_SECONDS * SAMPLE_RATE))
            if long_audio == "truncate":
                pieces = pieces[:1]
            windows.extend(pieces)
            counts.append(len(pieces))
        if padding == "max_length":  # the paper's input: every window is 30 s of audio, zero-padded
            windows = [np.pad(w, (0, window - len(w))) for w in windows]
        half = extractor.n_fft // 2
        lengths = [len(w) for w in windows]
        padded = np.zeros((len(windows), max(lengths) + 2 * half), dtype=np.float32)
        for row, w in enumerate(windows):
            padded[row, : len(w) + 2 * half] = np.pad(w, half, mode="reflect")
        data = {"padded_waveforms": torch.from_numpy(padded), "waveform_lengths": torch.tensor(lengths)}
        if any(c > 1 for c in counts):
            data["audio_window_counts"] = torch.tensor(counts)
        return data

    def log_mel(
        self,
        padded_waveforms: torch.Tensor,
        waveform_lengths: torch.Tensor,
        audio_window_counts: torch.Tensor | None = None,
        device=None,
        with_mask: bool = True,
        per_window: bool | None = None,
    ) -> dict:
        """Whisper log-mel features of a batch, on `device` (default: where the waveforms are): on an accelerator one
        STFT for the whole batch; on the CPU one per window, over its own samples only (there padding costs more
        than the batching saves).

        Equal to Whisper's feature extractor run clip by clip, within float rounding, including its per-clip
        dynamic-range clamp at (clip max - 8): the clamp is taken over each clip's own frames, never over the batch.

        `per_window` forces one way or the other (default: per window on the CPU, one STFT elsewhere).

        Returns `input_features` `(windows, mel_bins, frames)`, `input_features_mask` `(windows, frames)` (with
        `with_mask`, the default) and `audio_window_counts` when given.
        """
        extractor = self.feature_extractor
        device = padded_waveforms.device if device is None else torch.device(device)
        waveforms = padded_waveforms.to(device, torch.float32, non_blocking=True)
        lengths = waveform_lengths.to(device)
        window = torch.hann_window(extractor.n_fft, device=device)
        mel_filters = torch.from_numpy(extractor.mel_filters).to(device, torch.float32)
        if device.type == "cpu" if per_window is None else per_window:
            rows = [
                self._log_mel(waveforms[i : i + 1, : n + extractor.n_fft], lengths[i : i + 1], window, mel_filters)
                for i, n in enumerate(lengths.tolist())
            ]
            longest = max(row.shape[-1] for row in rows)
            log_spec = torch.cat([torch.nn.functional.pad(row, (0, longest - row.shape[-1])) for row in rows])
        else:
            log_spec = self._log_mel(waveforms, lengths, window, mel_filters)
        data = {"input_features": log_spec}
        if with_mask:
            data["input_features_mask"] = self._frame_mask(lengths, log_spec.shape[-1]).long()
        if audio_window_counts is not None:
            data["audio_window_counts"] = audio_window_counts.to(device)
        return data

    def _frame_mask(self, lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """`(windows, frames)` True on each window's own frames (Whisper drops the centred STFT's last frame)."""
        own = lengths // self.feature_extractor.hop_length
        return torch.arange(frames, device=lengths.device) < own[:, None]

    def _log_mel(self, waveforms, lengths, window, mel_filters) -> torch.Tensor:
        """`(windows, mel_bins, frames)` log-mel of reflect-padded waveforms `(windows, samples + n_fft)`; frames past a
        window's own length are zeros."""
        extractor = self.feature_extractor
        stft = torch.stft(
            waveforms, extractor.n_fft, extractor.hop_length, window=window, center=False, return_complex=True
        )
        stft = stft[..., : int(lengths.max()) // extractor.hop_length]
        power = (stft.real.square() + stft.imag.square()).contiguous()  # |z|^2 without abs's square root
        log_spec = (mel_filters.T @ power).clamp(min=1e-10).log10()
        mask = self._frame_mask(lengths, log_spec.shape[-1])
        clip_max = log_spec.masked_fill(~mask[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
        log_spec = (torch.maximum(log_spec, clip_max - 8.0) + 4.0) / 4.0
        return log_spec * mask[:, None, :]

    @property
    def model_input_names(self):
        return list(self.tokenizer.model_input_names) + ["input_features", "input_features_mask", "audio_window_counts"]


# ----------------------------------------------------------------------------------------------------------------
# Audio loading helpers (also used by the training and indexing code)
# ----------------------------------------------------------------------------------------------------------------


def load_audio(
    item, sampling_rate: int | None, target_rate: int = SAMPLE_RATE, name: str = "audio", strict: bool = False
) -> np.ndarray:
    """Decode one clip to a float32 mono waveform at `target_rate`.

    `item` is a path, a numpy/torch array (needs `sampling_rate`), a dict with `array` + `sampling_rate`, or
    `path` and/or `bytes`, or a decoder object with `get_all_samples()` (torchcodec's `AudioDecoder`, what `datasets`
    4+ gives with decoding on). wav/flac/ogg/mp3 decode with soundfile; m4a/aac/opus/webm with PyAV (the `av` extra).
    Raises `ValueError` naming `name` when the clip is unreadable, empty or not finite. A file that decodes to less
    than its header announces gives a `TruncatedAudioWarning` naming it, or, with `strict=True`, a `ValueError`.
    """
    if isinstance(item, dict):
        if item.get("array") is not None:
            rate = item.get("sampling_rate")
            if rate is None:
                raise ValueError(f"{name}: dict has 'array' but no 'sampling_rate'.")
            waveform, rate = _as_array(item["array"], name), _check_rate(rate, name)
        elif item.get("bytes") is not None:
            waveform, rate = _decode(io.BytesIO(item["bytes"]), name, strict, _suffix(item.get("path")))
        elif item.get("path") is not None:
            span = (item.get("start"), item.get("end"))  # a segment of the file, in seconds (the index's windows)
            waveform, rate = _decode(item["path"], name, strict, span=span if span != (None, None) else None)
        else:
            raise ValueError(
                f"{name}: dict needs 'array' and 'sampling_rate', or 'path' or 'bytes'; got keys {sorted(item)}."
            )
    elif isinstance(item, (str, os.PathLike)):
        waveform, rate = _decode(item, name, strict)
    elif isinstance(item, (bytes, bytearray)):
        waveform, rate = _decode(io.BytesIO(item), name, strict)
    elif is_array(item):
        if sampling_rate is None:
            raise ValueError(
                f"{name}: a raw array needs `sampling_rate` (the rate it was recorded at); pass sampling_rate=, or "
                '{"array": x, "sampling_rate": rate}.'
            )
        waveform, rate = _as_array(item, name), _check_rate(sampling_rate, name)
    elif hasattr(item, "get_all_samples"):  # torchcodec's AudioDecoder, duck-typed: torchcodec stays optional
        waveform, rate = _from_decoder(item, name)
    else:
        raise ValueError(
            f"{name}: unsupported audio type {type(item).__name__}; give a path, an array with sampling_rate, "
            "or a dict with 'array'+'sampling_rate', 'path' or 'bytes'."
        )
    waveform = _to_mono_float(waveform, name)
    if waveform.size == 0:
        raise ValueError(f"{name}: audio is empty.")
    if not np.isfinite(waveform).all():
        raise ValueError(f"{name}: audio contains NaN or Inf samples.")
    if rate <= 0:
        raise ValueError(f"{name}: sampling_rate must be positive, got {rate}.")
    if rate != target_rate:
        import soxr

        waveform = soxr.resample(waveform, rate, target_rate, quality="HQ").astype(np.float32)
    if waveform.shape[0] < target_rate // 100:
        raise ValueError(f"{name}: audio is shorter than 10 ms ({waveform.shape[0]} samples at {target_rate} Hz).")
    return waveform


def audio_duration(item, sampling_rate: int | None = None) -> float | None:
    """Seconds of audio in `item` (a path, bytes, an array with `sampling_rate`, or a datasets-style dict) from its
    length or its file header, without decoding; None when it cannot be told (the decoder will say why)."""
    if isinstance(item, dict) and item.get("array") is not None:
        item, sampling_rate = item["array"], item.get("sampling_rate")
    if isinstance(item, dict) and item.get("end") is not None:
        return float(item["end"]) - float(item.get("start") or 0)
    if is_array(item):
        return len(item) / sampling_rate if sampling_rate and getattr(item, "ndim", 1) == 1 else None
    source = item if isinstance(item, (str, os.PathLike, bytes, bytearray)) else None
    if isinstance(item, dict):
        source = item.get("bytes") or item.get("path")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)) and _suffix(source) in FFMPEG_SUFFIXES:
        return _av_duration(source)
    import soundfile

    try:
        info = soundfile.info(source)
    except Exception:  # LibsndfileError, RuntimeError or OSError, by version
        return None
    return info.frames / info.samplerate


def _av_duration(path) -> float | None:
    try:
        import av

        with av.open(os.fspath(path)) as container:
            return container.duration / 1e6 if container.duration else None
    except Exception:  # not installed, or unreadable: the decoder will say why
        return None


def split_windows(waveform: np.ndarray, window: int, min_trailing: int) -> list[np.ndarray]:
    """Cut a waveform into consecutive windows of `window` samples; a short trailing remainder is dropped."""
    if waveform.shape[0] <= window:
        return [waveform]
    pieces = [waveform[start : start + window] for start in range(0, waveform.shape[0], window)]
    if pieces[-1].shape[0] < min_trailing:
        pieces = pieces[:-1]
    return pieces


def _suffix(path) -> str:
    return os.path.splitext(os.fspath(path))[1].lower() if isinstance(path, (str, os.PathLike)) else ""


def _decode(source, name: str, strict: bool = False, suffix: str = "", span=None) -> tuple[np.ndarray, int]:
    """`(channels, samples)` and the rate; `span=(start, end)` seconds reads only that part (seeking where the
    format allows; FFmpeg formats are decoded whole and cut)."""
    if (suffix or _suffix(source)) in FFMPEG_SUFFIXES:
        waveform, rate = _decode_with_av(source, name, suffix or _suffix(source))
        return (waveform[:, _frames(span, rate, waveform.shape[1])] if span else waveform), rate
    import soundfile

    try:
        with soundfile.SoundFile(source) as audio_file:
            announced, rate = audio_file.frames, audio_file.samplerate
            part = _frames(span, rate, announced) if span else slice(0, announced)
            if span:
                audio_file.seek(part.start)
            waveform = audio_file.read(part.stop - part.start if span else -1, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError or OSError
        raise ValueError(f"{name}: cannot decode audio ({type(error).__name__}: {error}).") from error
    if span is None and 0 < len(waveform) < announced * (1 - TRUNCATION_TOLERANCE):
        decoded, expected = len(waveform) / rate, announced / rate
        message = f"{name}: decoded {decoded:.2f} s of the {expected:.2f} s its header announces; it looks truncated."
        if strict:
            raise ValueError(message)
        warnings.warn(message, TruncatedAudioWarning, stacklevel=3)
    return waveform.T, rate  # (channels, samples)


def _frames(span, rate: int, total: int) -> slice:
    start, end = span
    first = min(total, max(0, int(round((start or 0) * rate))))
    return slice(first, total if end is None else min(total, max(first, int(round(end * rate)))))


def _decode_with_av(source, name: str, suffix: str) -> tuple[np.ndarray, int]:
    try:
        import av
    except ImportError:
        raise ValueError(
            f"{name}: {suffix} files are decoded by PyAV, which is not installed; {FFMPEG_INSTALL}."
        ) from None
    try:
        with av.open(source) as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            stream = container.streams.audio[0]
            planar = av.AudioResampler(format="fltp")  # float32, one row per channel, at the stream's own rate
            chunks = [out.to_ndarray() for frame in container.decode(stream) for out in planar.resample(frame)]
            chunks += [out.to_ndarray() for out in planar.resample(None)]  # flush
            rate = stream.rate
    except Exception as error:  # av.error.FFmpegError and friends, by version
        raise ValueError(f"{name}: cannot decode audio ({type(error).__name__}: {error}).") from error
    if not chunks:
        raise ValueError(f"{name}: audio is empty.")
    return np.concatenate(chunks, axis=1), int(rate)


def _from_decoder(decoder, name: str) -> tuple[np.ndarray, int]:
    try:
        samples = decoder.get_all_samples()
        return _as_array(samples.data, name), _check_rate(samples.sample_rate, name)
    except ValueError:
        raise
    except Exception as error:  # whatever the decoder raises
        raise ValueError(f"{name}: cannot decode audio ({type(error).__name__}: {error}).") from error


def is_array(item) -> bool:
    """A numpy array or a torch tensor (by module, so torch is not imported for it; not torchcodec's objects)."""
    return isinstance(item, np.ndarray) or type(item).__module__.split(".")[0] == "torch"


def _check_rate(rate, name: str) -> int:
    """A sampling rate must be a whole number of Hz, given as a number: "16000" or 16000.7 are refused, not coerced."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: sampling_rate must be a number of Hz, got {type(rate).__name__} {rate!r}.")
    if float(rate) != int(rate):
        raise ValueError(f"{name}: sampling_rate must be a whole number of Hz, got {rate!r}.")
    return int(rate)


def _as_array(item, name: str) -> np.ndarray:
    if type(item).__module__.split(".")[0] == "torch":
        import torch

        item = item.detach().cpu()
        # numpy has no bfloat16: half-precision tensors are widened to float32 first
        item = (item.float() if item.dtype in (torch.bfloat16, torch.float16) else item).numpy()
    if isinstance(item, list):
        item = np.asarray(item)
    if not isinstance(item, np.ndarray):
        raise ValueError(f"{name}: 'array' must be a numpy or torch array, got {type(item).__name__}.")
    return item


def _to_mono_float(waveform: np.ndarray, name: str) -> np.ndarray:
    if waveform.dtype.kind == "i":  # signed integer PCM -> [-1, 1)
        waveform = waveform.astype(np.float64) / (float(np.iinfo(waveform.dtype).max) + 1)
    elif waveform.dtype.kind == "u":  # unsigned PCM is centred at half range
        half = (float(np.iinfo(waveform.dtype).max) + 1) / 2
        waveform = (waveform.astype(np.float64) - half) / half
    elif waveform.dtype.kind != "f":
        raise ValueError(f"{name}: audio samples must be numbers, got dtype {waveform.dtype}.")
    if waveform.ndim == 2:
        # One multi-channel clip. Channels are the short axis: (channels, samples) as torchaudio gives, or
        # (samples, channels) as soundfile. An array whose short axis is longer than a channel count could be is more
        # likely a batch of clips, and is refused rather than averaged into one clip.
        channel_axis = 0 if waveform.shape[0] <= waveform.shape[1] else 1
        if waveform.shape[channel_axis] > MAX_CHANNELS:
            raise ValueError(
                f"{name}: a 2-D array here is one multi-channel clip, (channels, samples) or (samples, channels) with "
                f"at most {MAX_CHANNELS} channels; shape {waveform.shape} cannot be read safely. For a batch, pass a "
                "list of 1-D clips (or the 2-D array itself as `audio=`, one clip per row)."
            )
        waveform = waveform.mean(axis=channel_axis)
    elif waveform.ndim != 1:
        raise ValueError(f"{name}: audio must be 1-D (mono) or 2-D (multi-channel), got shape {waveform.shape}.")
    return np.ascontiguousarray(waveform, dtype=np.float32)


def _is_batch(audio) -> bool:
    return isinstance(audio, (list, tuple))


def describe_audio(item, label: str) -> str:
    """`label` plus the item's path when it has one: how errors name a clip (`audio[3] (dog.wav)`, `row 12 "
    "(x.flac)`)."""
    path = item if isinstance(item, (str, os.PathLike)) else item.get("path") if isinstance(item, dict) else None
    return f"{label} ({os.fspath(path)})" if path else label


WavLinkProcessor.register_for_auto_class()

__all__ = [
    "AUDIO_SUFFIXES",
    "FFMPEG_SUFFIXES",
    "SAMPLE_RATE",
    "WavLinkProcessor",
    "audio_duration",
    "describe_audio",
    "is_array",
    "load_audio",
    "split_windows",
]
