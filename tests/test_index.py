import os
import shutil
import sqlite3
import time

import numpy as np
import pytest
import torch
from conftest import run_two_cpu_processes, tiny_model, tiny_processor

from wavlink.search import index as wavlink_index
from wavlink.search.index import AudioIndex, IndexFileError, build_index, quantize_int8, search
from wavlink.training.synthetic import generate_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    data = generate_dataset(root / "data", num_train=0, num_eval=12, seed=4)
    sounds = root / "sounds"
    (sounds / "nested").mkdir(parents=True)
    for i, wav in enumerate(sorted((data["eval"].parent / "audio").glob("*.wav"))):
        shutil.copy(wav, (sounds / "nested" if i % 3 == 0 else sounds) / wav.name)
    (sounds / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    (sounds / "notes.txt").write_text("not audio, not indexed")
    model_dir = root / "model"
    model, processor = tiny_model(seed=5), tiny_processor(["a steady tone", "white noise", "beeps", "a sweep"])
    model.text_model.resize_token_embeddings(len(processor.tokenizer))
    model.config.text_config.vocab_size = len(processor.tokenizer)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return sounds, model_dir


def test_index_search_and_incremental_reindex(setup, tmp_path):
    sounds, model_dir = setup
    out = tmp_path / "sounds.index"
    report = build_index(sounds, str(model_dir), out, dim=8, progress=False)
    assert report["files"] == 13 and report["added"] == 12 and report["total_in_index"] == 12
    assert len(report["failures"]) == 1 and "corrupt.wav" in report["failures"][0]
    paths, durations, matrix = AudioIndex.open(out).load()
    assert matrix.shape == (12, 8) and all(d > 0.9 for d in durations)
    assert any("/nested/" in p for p in paths)

    # nothing changed: nothing is embedded again
    again = build_index(sounds, str(model_dir), out, dim=8, progress=False)
    assert again["added"] == 0 and again["skipped_unchanged"] == 12
    # a touched file is re-embedded, and only it
    target = sorted(sounds.glob("*.wav"))[1]
    os.utime(target, (time.time() + 5, time.time() + 5))
    assert build_index(sounds, str(model_dir), out, dim=8, progress=False)["added"] == 1

    # an audio query finds itself first with cosine 1
    hits = search(out, audio=str(target), k=3, progress=False)
    assert hits[0][1] == str(target.resolve()) and hits[0][0] == pytest.approx(1.0, abs=1e-5)
    text_hits = search(out, query="white noise", k=4, progress=False)
    assert len(text_hits) == 4 and all(-1 <= s <= 1 for s, _, _ in text_hits)
    # search scores equal the model's own cosine similarities
    from wavlink.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(model_dir))
    with torch.no_grad():
        query = model.get_text_features(**processor(text=["white noise"]), dim=8).pooler_output[0].numpy()
    np.testing.assert_allclose(
        [s for s, _, _ in text_hits], np.sort(matrix @ query / np.linalg.norm(matrix, axis=1))[::-1][:4], atol=1e-5
    )


def test_int8_index_is_smaller_and_ranks_alike(setup, tmp_path):
    sounds, model_dir = setup
    build_index(sounds, str(model_dir), tmp_path / "f.index", dim=16, progress=False)
    build_index(sounds, str(model_dir), tmp_path / "q.index", dim=16, int8=True, progress=False)
    _, _, exact = AudioIndex.open(tmp_path / "f.index").load()
    _, _, approx = AudioIndex.open(tmp_path / "q.index").load()
    assert np.abs(exact - approx).max() < 0.01
    codes, scales = quantize_int8(exact)
    assert codes.dtype == np.int8 and np.abs(codes).max() == 127
    query = exact[0]
    np.testing.assert_allclose(approx @ query, exact @ query, atol=0.02)  # cosine scores barely move

    def stored(name):
        return sqlite3.connect(tmp_path / name).execute("SELECT sum(length(embedding)) FROM items").fetchone()[0]

    assert stored("q.index") * 4 == stored("f.index") == 12 * 16 * 4


def test_an_interrupted_run_keeps_what_it_wrote(setup, tmp_path, monkeypatch):
    sounds, model_dir = setup
    out = tmp_path / "partial.index"
    from pipeline_wavlink import WavLinkEmbeddingPipeline

    real_call, calls = WavLinkEmbeddingPipeline.__call__, []

    def crash_on_third_chunk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(WavLinkEmbeddingPipeline, "__call__", crash_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        build_index(sounds, str(model_dir), out, dim=8, chunk=3, progress=False)
    committed = sum(f.name != "corrupt.wav" for f in wavlink_index.find_audio(sounds)[:6])  # two chunks of 3 files
    assert len(AudioIndex.open(out)) == committed
    monkeypatch.setattr(WavLinkEmbeddingPipeline, "__call__", real_call)
    report = build_index(sounds, str(model_dir), out, dim=8, chunk=3, progress=False)
    assert (
        report["added"] == 12 - committed
        and report["skipped_unchanged"] == committed
        and report["total_in_index"] == 12
    )


def test_clear_errors(setup, tmp_path, capsys):
    sounds, model_dir = setup
    (tmp_path / "empty").mkdir()
    cases = [
        (
            wavlink_index.index_main,
            [str(tmp_path / "empty"), "--model", str(model_dir), "--out", str(tmp_path / "x.index")],
            "no audio files",
        ),
        (
            wavlink_index.index_main,
            [str(sounds), "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x.index")],
            "does not exist",
        ),
        (
            wavlink_index.index_main,
            [str(sounds), "--model", str(model_dir), "--out", str(tmp_path / "x.index"), "--dim", "5"],
            "--dim 5",
        ),
    ]
    (tmp_path / "corrupt.index").write_bytes(b"this is not sqlite" * 100)
    cases.append(
        (wavlink_index.search_main, [str(tmp_path / "corrupt.index"), "query"], "not a WavLink index or is corrupt")
    )
    other = sqlite3.connect(tmp_path / "other.index")
    other.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    other.execute("CREATE TABLE items (path TEXT)")
    other.commit()
    cases.append((wavlink_index.search_main, [str(tmp_path / "other.index"), "query"], "not a WavLink index"))
    for command, argv, message in cases:
        assert command(argv + ["--no_progress"]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    build_index(sounds, str(model_dir), tmp_path / "d8.index", dim=8, progress=False)
    with pytest.raises(IndexFileError, match="dim '8' \\(asked '16'\\)"):
        build_index(sounds, str(model_dir), tmp_path / "d8.index", dim=16, progress=False)


@pytest.mark.fixtures
def test_real_recordings_index(tmp_path, fixtures, real_model, real_processor, capsys):
    model_dir = tmp_path / "real"
    real_model.save_pretrained(model_dir)
    real_processor.save_pretrained(model_dir)
    assert (
        wavlink_index.index_main(
            [
                str(fixtures / "audio" / "animals"),
                "--model",
                str(model_dir),
                "--out",
                str(tmp_path / "animals.index"),
                "--dim",
                "64",
                "--int8",
                "--no_progress",
            ]
        )
        == 0
    )
    assert "10 embedded" in capsys.readouterr().out
    assert (
        wavlink_index.search_main(
            [
                str(tmp_path / "animals.index"),
                "--audio",
                str(fixtures / "audio" / "animals" / "owl.mp3"),
                "-k",
                "3",
                "--no_progress",
            ]
        )
        == 0
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert "owl.mp3" in first and "+0.99" in first or "+1.00" in first


@pytest.mark.slow
def test_two_process_indexing_matches_one_process(setup, tmp_path):
    sounds, model_dir = setup
    single = build_index(sounds, str(model_dir), tmp_path / "one.index", dim=8, chunk=2, progress=False)
    result = run_two_cpu_processes(
        [
            "-m",
            "wavlink.search",
            str(sounds),
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "two.index"),
            "--dim",
            "8",
            "--no_progress",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12 embedded" in result.stdout and "1 unreadable" in result.stdout
    one_paths, _, one = AudioIndex.open(tmp_path / "one.index").load()
    two_paths, _, two = AudioIndex.open(tmp_path / "two.index").load()
    assert sorted(one_paths) == sorted(two_paths) and single["added"] == 12
    order = [two_paths.index(p) for p in one_paths]
    np.testing.assert_allclose(two[order], one, atol=1e-5)
