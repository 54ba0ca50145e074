"""Today's code reproduces, bit for bit, a folder saved before the restructuring (see reference/make_reference.py)."""

from pathlib import Path

import pytest
import torch
from reference.make_reference import compute, reference_batch
from safetensors.torch import load_file
from transformers import AutoTokenizer, WhisperFeatureExtractor

from modeling_wavlink import WavLinkModel
from processing_wavlink import WavLinkProcessor

REFERENCE = Path(__file__).resolve().parent / "reference" / "tiny-wavlink-0.1"


@pytest.mark.parametrize("name", ["global-token-clip", "mean-siglip"])
def test_saved_folder_gives_bit_identical_embeddings_and_losses(name):
    folder = REFERENCE / name
    model = WavLinkModel.from_pretrained(folder)
    processor = WavLinkProcessor(WhisperFeatureExtractor.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))
    expected = load_file(str(folder / "expected_outputs.safetensors"))
    got = compute(model, reference_batch(processor))
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{name}: {key} differs by {(got[key] - value).abs().max().item():.3g}"
