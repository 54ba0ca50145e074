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


def make_clip(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """One clip of `kind` with random attributes, and its captions."""
    seconds = rng.uniform(1.0, 4.0)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    if kind in ("tone", "mixture"):
        pitch = rng.choice(list(PITCHES))
        wave = rng.choice(WAVEFORMS)
        freq = PITCHES[pitch] * rng.uniform(0.95, 1.05)
        audio = 0.5 * _oscillator(wave, 2 * np.pi * freq * t)
        captions = [
            f"a steady {pitch} pitched {wave} tone",
            f"a constant {wave} wave at a {pitch} pitch",
            f"a {pitch} {wave} tone that does not change",
        ]
        if kind == "mixture":
            colour = rng.choice(NOISES)
            audio = 0.6 * audio + 0.4 * _coloured_noise(colour, n, rng)
            captions = [
                f"a {pitch} pitched {wave} tone over {colour} noise",
                f"{colour} noise mixed with a steady {pitch} {wave} tone",
                f"a {wave} wave at a {pitch} pitch with {colour} noise behind it",
            ]
    elif kind == "sweep":
        direction = rng.choice(["rising", "falling"])
        low, high = 200.0 * rng.uniform(0.9, 1.1), 2000.0 * rng.uniform(0.9, 1.1)
        start, end = (low, high) if direction == "rising" else (high, low)
        freq = start * (end / start) ** (t / seconds)  # exponential sweep
        audio = 0.5 * np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)
        word = "upward" if direction == "rising" else "downward"
        captions = [
            f"a {direction} sweep",
            f"a tone sweeping {word} in pitch",
            f"a {direction} chirp that glides {word}",
        ]
    elif kind == "beeps":
        count = int(rng.integers(1, 6))
        n = int(max(seconds, 0.4 * count + 0.3) * SAMPLE_RATE)
        audio = np.zeros(n)
        beep = int(0.15 * SAMPLE_RATE)
        for i in range(count):
            start = int((0.15 + 0.4 * i) * SAMPLE_RATE)
            audio[start : start + beep] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(beep) / SAMPLE_RATE)
        word = COUNT_WORDS[count]
        plural = "beep" if count == 1 else "beeps"
        captions = [
            f"{word} short {plural}",
            f"a beep repeated {word} {'time' if count == 1 else 'times'}",
            f"{word} electronic {plural} with silence between",
        ]
    elif kind == "noise":
        colour = rng.choice(NOISES)
        audio = 0.5 * _coloured_noise(colour, n, rng)
        texture = {"white": "a bright hiss", "pink": "a soft even rush", "brown": "a deep rumble"}[colour]
        captions = [f"{colour} noise", f"{texture} of {colour} noise", f"continuous {colour} noise with no tone"]
    else:
        raise ValueError(f"unknown synthetic sound kind {kind!r}; choose from {KINDS}")
    audio = _fade(audio.astype(np.float64)) * rng.uniform(0.5, 1.0)
    return audio.astype(np.float32), captions


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
