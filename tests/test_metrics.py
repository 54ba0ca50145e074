"""Retrieval and classification metrics against cases worked out by hand."""

import numpy as np
import pytest

from wavlink.evaluation.metrics import (
    audio_to_text_ranks,
    classification_metrics,
    retrieval_metrics,
    text_to_audio_ranks,
)
from wavlink.evaluation.tasks import zero_shot_at_dims


def test_perfect_ranking():
    # 3 clips x 2 captions; every caption's own clip scores highest and vice versa
    caption_to_clip = np.array([0, 0, 1, 1, 2, 2])
    similarity = np.full((6, 3), 0.0)
    similarity[np.arange(6), caption_to_clip] = 1.0
    m = retrieval_metrics(similarity, caption_to_clip)
    for key in ("t2a_R@1", "t2a_R@5", "t2a_R@10", "a2t_R@1", "a2t_R@10", "t2a_mAP@10"):
        assert m[key] == 100.0
    # audio to text: both captions at ranks 1 and 2 -> (1/2)(1/1 + 2/2) = 1
    assert m["a2t_mAP@10"] == 100.0
    assert m["t2a_mean_rank"] == 1 and m["a2t_median_rank"] == 1


def test_worst_ranking():
    # 12 clips, one caption each, every caption ranks its own clip last
    n = 12
    similarity = np.eye(n) * -1.0
    m = retrieval_metrics(similarity, np.arange(n))
    assert m["t2a_R@10"] == 0 and m["a2t_R@10"] == 0 and m["t2a_mAP@10"] == 0 and m["a2t_mAP@10"] == 0
    assert m["t2a_mean_rank"] == n and m["a2t_mean_rank"] == n


def test_ties_count_against_the_model():
    similarity = np.ones((4, 4))  # a collapsed model: every score equal
    m = retrieval_metrics(similarity, np.arange(4))
    assert m["t2a_R@1"] == 0 and m["a2t_R@1"] == 0 and m["t2a_mean_rank"] == 4
    # one tie with the correct clip: rank 2, not 1
    similarity = np.array([[0.9, 0.9, 0.1]])
    assert text_to_audio_ranks(similarity, np.array([0])).tolist() == [2]


def test_several_captions_inside_and_outside_the_top_10():
    # 1 query clip with 5 captions among 20 captions; its captions rank 1, 3, 8, 12 and 20
    n_captions = 20
    caption_to_clip = np.array([1] * n_captions)
    own = [0, 1, 2, 3, 4]
    caption_to_clip[own] = 0
    order = {0: 1, 1: 3, 2: 8, 3: 12, 4: 20}  # caption -> desired rank for clip 0
    others = [c for c in range(n_captions) if c not in own]
    free_ranks = [r for r in range(1, n_captions + 1) if r not in order.values()]
    rank_of = {**order, **dict(zip(others, free_ranks))}
    similarity = np.zeros((n_captions, 2))
    for caption, rank in rank_of.items():
        similarity[caption, 0] = 1.0 - rank / 100  # higher score -> better rank
    similarity[:, 1] = 0.5
    ranks = audio_to_text_ranks(similarity, caption_to_clip)
    assert ranks[0].tolist() == [1, 3, 8, 12, 20]
    m = retrieval_metrics(similarity, caption_to_clip)
    # sorted ranks inside the top 10: 1, 3, 8 -> (1/5) * (1/1 + 2/3 + 3/8)
    expected_clip0 = (1 / 1 + 2 / 3 + 3 / 8) / 5
    # clip 1 scores 0.5 for all 20 captions: its 15 captions tie with clip 0's 5, which count against it, so they
    # rank 6..20 -> (1/15) * (1/6 + 2/7 + 3/8 + 4/9 + 5/10)
    assert ranks[1].tolist() == list(range(6, 21))
    expected_clip1 = (1 / 6 + 2 / 7 + 3 / 8 + 4 / 9 + 5 / 10) / 15
    assert m["a2t_mAP@10"] == pytest.approx(100 * (expected_clip0 + expected_clip1) / 2)
    assert m["a2t_R@1"] == 50.0 and m["a2t_R@10"] == 100.0  # clip 0 hits at 1, clip 1 first at 6
    # text to audio: clip-0 captions score below 0.5 (so rank 2) except those with score > 0.5
    t2a = text_to_audio_ranks(similarity, caption_to_clip)
    assert t2a[:5].tolist() == [1, 1, 1, 1, 1]  # 1 - r/100 > 0.5 for every r <= 20
    assert t2a[5:].tolist() == [2] * 15  # clip 1 scores 0.5 < its competitor for every other caption


def test_unsorted_definition_would_differ():
    """LAION-CLAP's unsorted variant gives a different (inflated) number on this case; ours sorts."""
    similarity = np.array([[0.5], [0.9], [0.1]])  # 3 captions of one clip, ranks 2, 1, 3 in caption order
    ranks = audio_to_text_ranks(similarity, np.array([0, 0, 0]))[0]
    assert ranks.tolist() == [1, 2, 3]
    assert retrieval_metrics(similarity, np.array([0, 0, 0]))["a2t_mAP@10"] == pytest.approx(100.0)
    unsorted = np.mean([(j + 1) / r for j, r in enumerate([2, 1, 3])])
    assert unsorted != pytest.approx(1.0)


def test_classification_top_k():
    logits = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.5, 0.5, 0.0]])
    m = classification_metrics(logits, [0, 0, 1], top_k=(1, 2))
    # item 0 correct; item 1 true class ranks 3; item 2 ties with class 0 -> rank 2
    assert m["top1_accuracy"] == pytest.approx(100 / 3)
    assert m["top2_accuracy"] == pytest.approx(200 / 3)


def test_zero_shot_prompt_ensembling_at_dims():
    audio = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    # label 0 has two prompts whose mean points to axis 0; label 1's points to axis 1
    templates = np.array([[[1.0, 0.2, 0.0, 0.0], [1.0, -0.2, 0.0, 0.0]], [[0.1, 1.0, 0.0, 0.0], [-0.1, 1.0, 0.0, 0.0]]])
    templates = templates / np.linalg.norm(templates, axis=-1, keepdims=True)
    results = zero_shot_at_dims(audio, templates, np.array([0, 1]), dims=[4, 2])
    assert results[4]["top1_accuracy"] == 100 and results[2]["top1_accuracy"] == 100


def test_metrics_import_without_torch():
    import subprocess
    import sys

    from conftest import ROOT

    code = "import sys, wavlink.evaluation.metrics; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
