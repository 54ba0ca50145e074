"""A realistic, offline audio-caption benchmark: speech, animals, synthetic events, sequences and mixtures.

Every clip is built from events, and its captions say what a listener must attend to: what sounds (which animal,
which spoken word, beeps, a sweep), how many (two to five beeps), how fast (slow or quick speech, slow or rapid
beeps), how high (a high or low voice, high or low beeps, a rising or falling sweep), in what order (one thing, then
another) and mixed with what (over rain, over a low hum). Sources, all on the machine:

- speech from `espeak-ng` (Debian package): 12 words, male and female voice variants, slow and fast, low and high;
- the fixture recordings (10 animals; `../shared/fixtures` or `$WAVLINK_FIXTURES`), cut, gain-varied, some sped up;
- synthetic events: counted beeps, sweeps, noise backgrounds.

Deterministic by seed. Test clips have three captions each (paraphrases); training clips carry three phrasings in
their caption cell, one drawn per epoch. Writes `train.csv`, `test.csv` (columns audio, caption, duration, as
`train.py` and `wavlink-eval retrieval` read them) and 16-kHz wav files.

    python benchmarks/quality/generate.py --out data/quality --train 1500 --test 150 --seed 0
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from processing_wavlink import SAMPLE_RATE, load_audio  # noqa: E402

WORDS = ("seven", "hello", "stop", "yes", "no", "left", "right", "go", "up", "down", "water", "music")
ANIMALS = {"cat": "a cat meows", "cow": "a cow moos", "dog": "a dog barks", "duck": "a duck quacks",
           "frog": "a frog croaks", "horse": "a horse neighs", "owl": "an owl hoots", "pig": "a pig oinks",
           "rooster": "a rooster crows", "sheep": "a sheep bleats"}  # fmt: skip
COUNTS = {2: "two", 3: "three", 4: "four", 5: "five"}
BACKGROUNDS = {"rain": "over the sound of rain", "hum": "over a low electrical hum"}
VERSION = 1


class Sources:
    """The building blocks: cached fixture recordings and espeak-ng speech."""

    def __init__(self, rng: np.random.Generator, workdir: Path):
        fixtures = Path(os.environ.get("WAVLINK_FIXTURES", ROOT.parent / "shared" / "fixtures")) / "audio" / "animals"
        if not fixtures.is_dir():
            raise SystemExit(f"the fixture recordings are needed: {fixtures} does not exist (set WAVLINK_FIXTURES).")
        if shutil.which("espeak-ng") is None:
            raise SystemExit("espeak-ng is needed for the speech events: apt-get install espeak-ng")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one fixture's header overstates its length by 2%
            self.animals = {name: load_audio(str(fixtures / f"{name}.mp3"), None) for name in ANIMALS}
        self.rng, self.workdir = rng, workdir

    def speech(self, word: str, female: bool, fast: bool, high: bool) -> np.ndarray:
        voice = f"en-us+{'f3' if female else 'm3'}"
        path = self.workdir / "speech.wav"
        command = ["espeak-ng", "-v", voice, "-s", "230" if fast else "110", "-p", "85" if high else "15",
                   "-w", str(path), word]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
        return load_audio(str(path), None)

    def animal(self, name: str, seconds: float) -> np.ndarray:
        audio = self.animals[name]
        length = int(seconds * SAMPLE_RATE)
        if len(audio) > length:
            start = int(self.rng.integers(0, len(audio) - length))
            audio = audio[start : start + length]
        return audio / (np.abs(audio).max() + 1e-9) * self.rng.uniform(0.5, 0.9)


def beeps(count: int, fast: bool, high: bool, rng) -> np.ndarray:
    tone_s, gap_s = (0.08, 0.07) if fast else (0.2, 0.35)
    freq = rng.uniform(1500, 2200) if high else rng.uniform(300, 450)
    t = np.arange(int(tone_s * SAMPLE_RATE)) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * freq * t) * np.hanning(len(t)) ** 0.3
    gap = np.zeros(int(gap_s * SAMPLE_RATE))
    return 0.6 * np.concatenate([np.concatenate([tone, gap]) for _ in range(count)])


def sweep(rising: bool, rng) -> np.ndarray:
    seconds = rng.uniform(0.8, 1.5)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    low, high = rng.uniform(200, 400), rng.uniform(2000, 3500)
    start, end = (low, high) if rising else (high, low)
    freq = start * (end / start) ** (t / seconds)
    return 0.5 * np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)


def background(kind: str, length: int, rng) -> np.ndarray:
    if kind == "hum":
        t = np.arange(length) / SAMPLE_RATE
        return 0.15 * (np.sin(2 * np.pi * 60 * t) + 0.5 * np.sin(2 * np.pi * 120 * t))
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length)
    freqs[0] = freqs[1]
    rain = np.fft.irfft(spectrum / np.sqrt(freqs), length)  # pink noise, with drops
    rain /= np.abs(rain).max() + 1e-9
    drops = (rng.random(length) < 0.002) * rng.uniform(0.2, 0.6, length)
    return 0.2 * rain + drops


def event(sources: Sources, rng) -> tuple[np.ndarray, list[str]]:
    """One event and two or three phrasings of it (noun phrases that fit in a longer caption)."""
    kind = rng.choice(["speech", "animal", "beeps", "sweep"], p=[0.35, 0.35, 0.2, 0.1])
    if kind == "speech":
        word, female, fast, high = rng.choice(WORDS), rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5
        who = "a woman" if female else "a man"
        how = "quickly" if fast else "slowly"
        pitch = "in a high voice" if high else "in a deep voice"
        audio = sources.speech(word, female, fast, high)
        return audio, [f"{who} {how} says \"{word}\" {pitch}", f"{who} says the word {word}, {how}, {pitch}",
                       f"the word \"{word}\" spoken {how} by {who} {pitch}"]  # fmt: skip
    if kind == "animal":
        name = rng.choice(list(ANIMALS))
        audio = sources.animal(name, rng.uniform(1.5, 3.0))
        phrase = ANIMALS[name]
        return audio, [phrase, f"the sound of a {name}", f"{phrase} once"]
    if kind == "beeps":
        count, fast, high = int(rng.integers(2, 6)), rng.random() < 0.5, rng.random() < 0.5
        pitch, pace = ("high" if high else "low"), ("rapid" if fast else "slow")
        audio = beeps(count, fast, high, rng)
        number = COUNTS[count]
        return audio, [f"{number} {pace} {pitch} beeps", f"a {pitch} tone beeps {number} times, {pace}",
                       f"{number} {pitch}-pitched beeps in {pace} succession"]  # fmt: skip
    rising = rng.random() < 0.5
    direction = "rising" if rising else "falling"
    return sweep(rising, rng), [f"a {direction} sweep", f"a tone sliding {'up' if rising else 'down'}",
                                f"a {direction} electronic whistle"]  # fmt: skip


def clip(sources: Sources, rng) -> tuple[np.ndarray, list[str]]:
    """A clip of one event, two events in sequence, or an event over a background; three captions."""
    structure = rng.choice(["single", "sequence", "mixture"], p=[0.3, 0.4, 0.3])
    first, first_words = event(sources, rng)
    pause = np.zeros(int(rng.uniform(0.2, 0.6) * SAMPLE_RATE))
    lead = np.zeros(int(rng.uniform(0.1, 0.5) * SAMPLE_RATE))
    if structure == "sequence":
        second, second_words = event(sources, rng)
        audio = np.concatenate([lead, first, pause, second, pause])
        templates = ("{a}, then {b}", "first {a}, and after that {b}", "{b}, after {a}")
        captions = [t.format(a=a, b=b) for t, a, b in zip(templates, first_words, second_words)]
    else:
        audio = np.concatenate([lead, first, pause])
        captions = [first_words[0], first_words[1], first_words[2]]
        if structure == "mixture":
            kind = rng.choice(list(BACKGROUNDS))
            audio = audio + background(kind, len(audio), rng)
            other = "while it rains" if kind == "rain" else "with a hum in the background"
            captions = [
                f"{captions[0]} {BACKGROUNDS[kind]}",
                f"{captions[1]} {other}",
                f"{captions[2]}, {kind} behind it",
            ]
    audio = audio / max(1.0, np.abs(audio).max() / 0.95)
    return audio.astype(np.float32), [c[0].upper() + c[1:] for c in captions]


def generate(out: Path, train: int, test: int, seed: int) -> dict[str, Path]:
    """Write the benchmark to `out`; reuse it when one with the same settings is complete there."""
    import soundfile

    settings = {"train": train, "test": test, "seed": seed, "version": VERSION}
    stamp = out / "benchmark.json"
    paths = {"train": out / "train.csv", "test": out / "test.csv"}
    if stamp.exists() and json.loads(stamp.read_text()) == settings:
        return paths
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as workdir:
        sources = Sources(rng, Path(workdir))
        for split, count in (("train", train), ("test", test)):
            rows = []
            for i in range(count):
                audio, captions = clip(sources, rng)
                name = f"audio/{split}_{i:05d}.wav"
                soundfile.write(out / name, audio, SAMPLE_RATE, subtype="PCM_16")
                rows.append({"audio": name, "caption": json.dumps(captions),
                             "duration": round(len(audio) / SAMPLE_RATE, 3)})  # fmt: skip
            with open(paths[split], "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=["audio", "caption", "duration"])
                writer.writeheader()
                writer.writerows(rows)
    stamp.write_text(json.dumps(settings))  # last: its presence means the benchmark is complete
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "data" / "quality"))
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = generate(Path(args.out), args.train, args.test, args.seed)
    print(f"train: {paths['train']}\ntest:  {paths['test']}")


if __name__ == "__main__":
    main()
