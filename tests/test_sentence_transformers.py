"""A saved WavLink folder loads as a sentence-transformers model and encodes exactly what the model embeds."""

import numpy as np
import pytest
import torch

from processing_wavlink import load_audio

pytestmark = pytest.mark.fixtures
sentence_transformers = pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def st_model(saved_real_model):
    return sentence_transformers.SentenceTransformer(str(saved_real_model), trust_remote_code=True, device="cpu")


def own_audio(model, processor, clips, dim=None, **kwargs):
    with torch.inference_mode():
        return model.get_audio_features(**processor(audio=clips, **kwargs), dim=dim).pooler_output.numpy()


def own_text(model, processor, texts, dim=None):
    with torch.inference_mode():
        return model.get_text_features(**processor(text=texts), dim=dim).pooler_output.numpy()


def test_encode_gives_the_models_embeddings(st_model, real_model, real_processor, animal_files):
    assert set(st_model.modalities) >= {"text", "audio"}
    texts = ["a dog barks", "a cow moos in a field"]
    np.testing.assert_allclose(st_model.encode(texts), own_text(real_model, real_processor, texts), atol=1e-5)
    paths = animal_files[:3]
    expected = own_audio(real_model, real_processor, paths)
    np.testing.assert_allclose(st_model.encode(paths), expected, atol=1e-5)
    # arrays with their rate, as datasets-style dicts (the rate a sentence-transformers user has in hand)
    arrays = [load_audio(p, None, 44100) for p in paths]
    dicts = [{"array": a, "sampling_rate": 44100} for a in arrays]
    np.testing.assert_allclose(
        st_model.encode(dicts), own_audio(real_model, real_processor, arrays, sampling_rate=44100), atol=1e-5
    )


def test_truncate_dim_is_the_matryoshka_dim_and_similarity_is_cosine(saved_real_model, real_model, real_processor):
    dim = real_model.config.matryoshka_dims[2]
    texts = ["a dog barks", "rain on a tin roof", "a car passes"]
    truncated = sentence_transformers.SentenceTransformer(
        str(saved_real_model), trust_remote_code=True, device="cpu", truncate_dim=dim
    )
    expected = own_text(real_model, real_processor, texts, dim=dim)
    # sentence-transformers cuts the vector; normalize_embeddings=True re-normalises it, which is what dim= does
    np.testing.assert_allclose(truncated.encode(texts, normalize_embeddings=True), expected, atol=1e-5)
    cut = truncated.encode(texts)
    assert cut.shape == (3, dim)
    np.testing.assert_allclose(truncated.similarity(cut, cut).numpy(), expected @ expected.T, atol=1e-5)
