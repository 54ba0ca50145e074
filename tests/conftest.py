import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The suite never needs the real Hub (publishing tests start their own local one): fail fast instead of waiting on
# network time-outs. Set before huggingface_hub is imported, which reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import WhisperFeatureExtractor  # noqa: E402

from configuration_wavlink import WavLinkConfig  # noqa: E402
from modeling_wavlink import WavLinkModel  # noqa: E402
from processing_wavlink import WavLinkProcessor  # noqa: E402
from wavlink.training.tokenization import build_word_tokenizer  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def fixtures_dir() -> Path | None:
    for candidate in (os.environ.get("WAVLINK_FIXTURES"), ROOT.parent / "shared" / "fixtures"):
        if candidate and (Path(candidate) / "whisper-tiny.en").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = fixtures_dir()
    if path is None:
        pytest.skip("real fixtures not found at ../shared/fixtures or $WAVLINK_FIXTURES")
    return path


@pytest.fixture(scope="session")
def animal_files(fixtures) -> list[str]:
    return sorted(str(p) for p in (fixtures / "audio" / "animals").glob("*.mp3"))


@pytest.fixture(scope="session")
def real_model(fixtures):
    return WavLinkModel.from_towers(
        str(fixtures / "whisper-tiny.en"), str(fixtures / "all-MiniLM-L6-v2"), projection_dim=256
    ).eval()


@pytest.fixture(scope="session")
def real_processor(fixtures):
    return WavLinkProcessor.from_towers(str(fixtures / "whisper-tiny.en"), str(fixtures / "all-MiniLM-L6-v2"))


@pytest.fixture(scope="session")
def saved_real_model(tmp_path_factory, real_model, real_processor) -> Path:
    """The real-tower model and its processor saved in a folder, as a user would load them."""
    folder = tmp_path_factory.mktemp("wavlink-real")
    real_model.save_pretrained(folder)
    real_processor.save_pretrained(folder)
    return folder


def interrupt_call(monkeypatch, module, name: str, call: int) -> None:
    """Make the `call`-th call of `module.name` raise KeyboardInterrupt, as a killed run would stop there."""
    real, calls = getattr(module, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)


TINY_CAPTIONS = ["a dog barks", "rain falls softly", "a high tone", "a low hum", "birds sing", "a car passes"]


def tiny_config(**overrides) -> WavLinkConfig:
    audio = dict(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=1500,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=32,
    )
    text = dict(
        model_type="bert",
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    kwargs = dict(audio_config=audio, text_config=text, projection_dim=16)
    kwargs.update(overrides)
    return WavLinkConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> WavLinkModel:
    torch.manual_seed(seed)
    return WavLinkModel(tiny_config(**overrides)).eval()


def tiny_processor(captions=TINY_CAPTIONS) -> WavLinkProcessor:
    extractor = WhisperFeatureExtractor(feature_size=80, return_attention_mask=False)
    return WavLinkProcessor(extractor, build_word_tokenizer(captions))


def run_two_cpu_processes(args: list[str], timeout: int = 600):
    """`accelerate launch` with 2 CPU processes over gloo (the only launch that really starts two on CPU) of
    `args` (a script path or `-m module`, then its arguments), from the project root. Returns the CompletedProcess."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(port),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *args,
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def noise(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)
