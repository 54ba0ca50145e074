"""A synthetic audio-caption dataset the package generates itself, for the offline demo and tests.

Sounds: steady tones (pitch x waveform), rising and falling sweeps, counted beeps, noise colours, and mixtures of a
tone with noise. Each clip's caption cell holds several phrasings of what it contains.
"""

import csv
import json
from pathlib import Path

import numpy as np

from processing_wavlink import SAMPLE_RATE

PITCHES = {"low": 220.0, "middle": 440.0, "high": 1200.0}
WAVEFORMS = ("sine", "square", "sawtooth")
NOISES = ("white", "pink", "brown")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
KINDS = ("tone", "sweep", "beeps", "noise", "mixture")


def _oscillator(waveform: str, phase: np.ndarray) -> np.ndarray:
    if waveform == "sine":
        return np.sin(phase)
    if waveform == "square":
        return np.sign(np.sin(phase))
    return 2.0 * ((phase / (2 * np.pi)) % 1.0) - 1.0  # sawtooth


def _coloured_noise(colour: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "white":
        return white / 3
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    spectrum = spectrum / (np.sqrt(freqs) if colour == "pink" else freqs)  # 1/f power, or 1/f^2 (brown)
    signal = np.fft.irfft(spectrum, n)
    return signal / (np.abs(signal).max() + 1e-9)


def _fade(signal: np.ndarray, ms: float = 10) -> np.ndarray:
    n = min(int(SAMPLE_RATE * ms / 1000), len(signal) // 2)
    ramp = np.linspace(0, 1, n)
    signal[:n] *= ramp
    signal[len(signal) - n :] *= ramp[::-1]
    return signal


# Three phrasings per kind of sound, filled in with the clip's attributes.
CAPTIONS = {
    "tone": ("a steady {pitch} pitched {wave} tone", "a constant {wave} wave at a {pitch} pitch",
             "a {pitch} {wave} tone that does not change"),
    "mixture": ("a {pitch} pitched {wave} tone over {colour} noise",
                "{colour} noise mixed with a steady {pitch} {wave} tone",
                "a {wave} wave at a {pitch} pitch with {colour} noise behind it"),
    "sweep": ("a {direction} sweep", "a tone sweeping {way} in pitch", "a {direction} chirp that glides {way}"),
    "beeps": ("{count} short {beeps}", "a beep repeated {count} {times}",
              "{count} electronic {beeps} with silence between"),
    "noise": ("{colour} noise", "{texture} of {colour} noise", "continuous {colour} noise with no tone"),
}  # fmt: skip
TEXTURES = {"white": "a bright hiss", "pink": "a soft even rush", "brown": "a deep rumble"}


def make_clip(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """One clip of `kind` with random attributes, and its captions."""
    if kind not in CAPTIONS:
        raise ValueError(f"unknown synthetic sound kind {kind!r}; choose from {KINDS}")
    seconds = rng.uniform(1.0, 4.0)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    words = {}
    if kind in ("tone", "mixture"):
        words.update(pitch=rng.choice(list(PITCHES)), wave=rng.choice(WAVEFORMS))
        freq = PITCHES[words["pitch"]] * rng.uniform(0.95, 1.05)
        audio = 0.5 * _oscillator(words["wave"], 2 * np.pi * freq * t)
        if kind == "mixture":
            words["colour"] = rng.choice(NOISES)
            audio = 0.6 * audio + 0.4 * _coloured_noise(words["colour"], n, rng)
    elif kind == "sweep":
        direction = rng.choice(["rising", "falling"])
        low, high = 200.0 * rng.uniform(0.9, 1.1), 2000.0 * rng.uniform(0.9, 1.1)
        start, end = (low, high) if direction == "rising" else (high, low)
        freq = start * (end / start) ** (t / seconds)  # exponential sweep
        audio = 0.5 * np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)
        words.update(direction=direction, way="upward" if direction == "rising" else "downward")
    elif kind == "beeps":
        count = int(rng.integers(1, 6))
        n = int(max(seconds, 0.4 * count + 0.3) * SAMPLE_RATE)
        audio = np.zeros(n)
        beep = int(0.15 * SAMPLE_RATE)
        for i in range(count):
            start = int((0.15 + 0.4 * i) * SAMPLE_RATE)
            audio[start : start + beep] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(beep) / SAMPLE_RATE)
        one = count == 1
        words.update(count=COUNT_WORDS[count], beeps="beep" if one else "beeps", times="time" if one else "times")
    else:  # noise
        colour = rng.choice(NOISES)
        audio = 0.5 * _coloured_noise(colour, n, rng)
        words.update(colour=colour, texture=TEXTURES[colour])
    audio = _fade(audio.astype(np.float64)) * rng.uniform(0.5, 1.0)
    return audio.astype(np.float32), [template.format(**words) for template in CAPTIONS[kind]]


def generate_dataset(out_dir: str | Path, num_train: int = 600, num_eval: int = 100, seed: int = 0) -> dict[str, Path]:
    """Write WAV clips and `train.csv` / `eval.csv` (columns `audio`, `caption`; the caption cell is a JSON list of
    phrasings, and `duration`). Returns the CSV paths. Reuses an existing, complete dataset with the same settings."""
    import soundfile

    out_dir = Path(out_dir)
    stamp = out_dir / "dataset.json"
    settings = {"num_train": num_train, "num_eval": num_eval, "seed": seed, "version": 1}
    paths = {"train": out_dir / "train.csv", "eval": out_dir / "eval.csv"}
    if stamp.exists() and json.loads(stamp.read_text()) == settings:
        return paths
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("eval", num_eval)):
        rows = []
        for i in range(count):
            kind = KINDS[i % len(KINDS)]
            audio, captions = make_clip(kind, rng)
            name = f"audio/{split}_{i:05d}_{kind}.wav"
            soundfile.write(out_dir / name, audio, SAMPLE_RATE, subtype="PCM_16")
            rows.append(
                {"audio": name, "caption": json.dumps(captions), "duration": round(len(audio) / SAMPLE_RATE, 3)}
            )
        with open(paths[split], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["audio", "caption", "duration"])
            writer.writeheader()
            writer.writerows(rows)
    stamp.write_text(json.dumps(settings))  # written last: its presence means the dataset is complete
    return paths
