"""Search that stays open: one load for many queries, sync with the folder, segment hits with time ranges, the
FAISS graph against exact search, and a stale or corrupt graph rebuilt."""

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
import soundfile
from conftest import interrupt_call, tiny_model, tiny_processor

from processing_wavlink import SAMPLE_RATE, load_audio
from wavlink.search import WavLinkIndex
from wavlink.search import ann as ann_module
from wavlink.search.index import build_index, search_main, segment_spans
from wavlink.search.store import AudioIndex
from wavlink.training.synthetic import generate_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    data = generate_dataset(root / "data", num_train=0, num_eval=8, seed=7)
    model_dir = root / "model"
    model, processor = tiny_model(seed=5), tiny_processor(["a steady tone", "white noise", "beeps", "a sweep"])
    model.text_model.resize_token_embeddings(len(processor.tokenizer))
    model.config.text_config.vocab_size = len(processor.tokenizer)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return sorted((data["eval"].parent / "audio").glob("*.wav")), model_dir


def copy_sounds(files, folder):
    folder.mkdir()
    for file in files:
        shutil.copy(file, folder / file.name)
    return folder


def test_an_open_index_answers_many_queries_with_one_load(setup, tmp_path, monkeypatch):
    files, model_dir = setup
    sounds = copy_sounds(files, tmp_path / "sounds")
    build_index(sounds, str(model_dir), tmp_path / "s.index", dim=8, progress=False)
    import wavlink.loading

    loads, reads = [], []
    real_load, real_read = wavlink.loading.load_model_and_processor, AudioIndex.load_vectors
    monkeypatch.setattr(
        wavlink.loading, "load_model_and_processor", lambda *a, **k: loads.append(1) or real_load(*a, **k)
    )
    monkeypatch.setattr(AudioIndex, "load_vectors", lambda self: reads.append(1) or real_read(self))
    index = WavLinkIndex.open(tmp_path / "s.index")
    assert len(index) == 8 and index.table.codes.flags["C_CONTIGUOUS"]
    own = index.search(audio=str(files[2]), k=3)
    assert own[0].path == str((sounds / files[2].name).resolve()) and own[0].score == pytest.approx(1.0, abs=1e-5)
    batch = index.search(text=["white noise", "a sweep", "beeps"], k=4)
    assert len(batch) == 3 and all(len(hits) == 4 for hits in batch)
    vectors = index.table.float32()[:2]
    by_vector = index.search(embedding=vectors, k=1)
    assert [hits[0].path for hits in by_vector] == index.table.paths[:2]
    assert loads == [1] and reads == [1]  # one model load and one read of the vectors for all of it
    # the scores are the model's own cosine similarities, best first
    text_vector = index._pipe(text="white noise", dim=8)
    expected = np.sort(index.table.float32() @ text_vector)[::-1][:4]
    np.testing.assert_allclose([h.score for h in batch[0]], expected, atol=1e-5)


def test_int8_stays_int8_in_memory(setup, tmp_path):
    files, model_dir = setup
    sounds = copy_sounds(files, tmp_path / "sounds")
    build_index(sounds, str(model_dir), tmp_path / "q.index", dim=16, int8=True, progress=False)
    build_index(sounds, str(model_dir), tmp_path / "f.index", dim=16, progress=False)
    quantized, exact = WavLinkIndex.open(tmp_path / "q.index"), WavLinkIndex.open(tmp_path / "f.index")
    assert quantized.table.codes.dtype == np.int8
    query = exact.table.float32()[3]
    int8_hits, float_hits = quantized.search(embedding=query, k=3), exact.search(embedding=query, k=3)
    # the same top hits (ranks 2 and 3 sit 4e-4 apart here, closer than int8 rounding can be trusted to keep on every
    # CPU, so their order is not asserted), with scores that barely move
    assert int8_hits[0].path == float_hits[0].path and {h.path for h in int8_hits} == {h.path for h in float_hits}
    np.testing.assert_allclose([h.score for h in int8_hits], [h.score for h in float_hits], atol=0.01)


def test_sync_removes_deleted_files_and_picks_up_renamed_ones(setup, tmp_path, capsys):
    files, model_dir = setup
    sounds = copy_sounds(files, tmp_path / "sounds")
    out = tmp_path / "s.index"
    build_index(sounds, str(model_dir), out, dim=8, progress=False)
    (sounds / files[0].name).unlink()
    (sounds / files[1].name).rename(sounds / "renamed.wav")
    args = [str(sounds), "--model", str(model_dir), "--out", str(out), "--dim", "8", "--no_progress"]
    from wavlink.search.index import index_main

    assert index_main(args) == 0
    assert "7 audio files: 1 added, 0 updated, 2 removed, 6 unchanged, 0 unreadable; 7 in" in capsys.readouterr().out
    paths = set(WavLinkIndex.open(out).table.paths)
    assert str((sounds / "renamed.wav").resolve()) in paths and len(paths) == 7
    assert not any(files[0].name in p or files[1].name in p for p in paths)
    # files indexed from another folder stay: sync only touches the folder it is given
    other = copy_sounds(files[:1], tmp_path / "other")
    build_index(other, str(model_dir), out, dim=8, progress=False)
    assert build_index(sounds, str(model_dir), out, dim=8, progress=False)["removed"] == 0
    assert len(AudioIndex.open(out)) == 8


def test_segment_spans():
    assert segment_spans(8.0, 10, 2) == [(None, None)]
    assert segment_spans(25.0, 10, 2) == [(0.0, 10.0), (8.0, 18.0), (16.0, 25.0)]
    assert segment_spans(20.5, 10, 0) == [(0.0, 10.0), (10.0, 20.0)]  # a 0.5-s tail is dropped


@pytest.mark.fixtures
def test_a_segment_hit_carries_its_time_range(fixtures, saved_real_model, tmp_path, capsys):
    animals = fixtures / "audio" / "animals"
    model_dir = saved_real_model
    # one long recording: cow, pig, sheep, then the owl at a known offset, then the dog
    parts = [load_audio(str(animals / f"{name}.mp3"), None) for name in ("cow", "pig", "sheep", "owl", "dog")]
    offset = sum(len(p) for p in parts[:3]) / SAMPLE_RATE
    owl_end = offset + len(parts[3]) / SAMPLE_RATE
    (tmp_path / "long").mkdir()
    soundfile.write(tmp_path / "long" / "farm.flac", np.concatenate(parts), SAMPLE_RATE)
    shutil.copy(animals / "cat.mp3", tmp_path / "long" / "cat.mp3")  # a short file: one vector
    out = tmp_path / "farm.index"
    build_index(tmp_path / "long", str(model_dir), out, segment_seconds=4, segment_overlap=2, progress=False)
    index = WavLinkIndex.open(out)
    farm = [i for i, p in enumerate(index.table.paths) if p.endswith("farm.flac")]
    assert len(farm) > 5 and index.table.starts[farm[1]] == 2.0 and index.table.ends[farm[1]] == 6.0
    best = index.search(audio=str(animals / "owl.mp3"), k=3, per_file=True)
    assert best[0].path.endswith("farm.flac") and len({h.path for h in best}) == len(best)
    assert offset - 1 <= best[0].start and best[0].end <= owl_end + 1  # the window lies inside the owl's call
    assert search_main([str(out), "--audio", str(animals / "owl.mp3"), "-k", "2", "--json", "--per_file",
                        "--no_progress"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["start"] == best[0].start and printed[0]["end"] == best[0].end and "score" in printed[0]


def synthetic_catalogue(path, count, dim=64, seed=0):
    """An index of clustered unit vectors (real embeddings are not uniform on the sphere)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((count // 20, dim))
    vectors = centers[rng.integers(0, len(centers), count)] + 0.5 * rng.standard_normal((count, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    catalogue = AudioIndex.create(path, "synthetic", dim, False, "fingerprint")
    catalogue.add([(f"/clips/{i}.wav", 1, 1.0, 1.0) for i in range(count)], vectors)
    return catalogue, vectors, rng


def test_ann_recall_against_exact_search(tmp_path):
    _, vectors, rng = synthetic_catalogue(tmp_path / "v.index", 4000)
    exact = WavLinkIndex.open(tmp_path / "v.index", ann=False)
    approximate = WavLinkIndex.open(tmp_path / "v.index", ann=True)
    assert approximate.ann is not None and exact.ann is None
    queries = vectors[rng.integers(0, len(vectors), 100)] + 0.1 * rng.standard_normal((100, 64)).astype(np.float32)
    truth = [{h.path for h in hits} for hits in exact.search(embedding=queries, k=10)]
    found = [{h.path for h in hits} for hits in approximate.search(embedding=queries, k=10)]
    recall = np.mean([len(t & f) / 10 for t, f in zip(truth, found)])
    assert recall >= 0.95
    # scores are cosines either way
    first = approximate.search(embedding=queries[0], k=1)[0]
    assert first.score == pytest.approx(exact.search(embedding=queries[0], k=1)[0].score, abs=1e-4)


def test_a_stale_or_corrupt_ann_file_is_rebuilt(tmp_path, monkeypatch):
    path = tmp_path / "v.index"
    catalogue, vectors, rng = synthetic_catalogue(path, 1000)
    graph_path, stamp_path = ann_module.ann_paths(path)
    WavLinkIndex.open(path, ann=True)
    assert json.loads(stamp_path.read_text()) == {"version": 1, "count": 1000, "max_id": 1000, "int8": False}
    builds = []
    real_build = ann_module.AnnIndex.build.__func__
    monkeypatch.setattr(
        ann_module.AnnIndex, "build", classmethod(lambda cls, *a: builds.append(1) or real_build(cls, *a))
    )
    # additions since: the graph is extended, not rebuilt, and finds the new vector
    extra = vectors[:1] * -1
    catalogue.add([("/clips/new.wav", 1, 1.0, 1.0)], extra)
    index = WavLinkIndex.open(path, ann=True)
    assert builds == [] and index.ann.index.ntotal == 1001
    assert index.search(embedding=extra[0], k=1)[0].path == "/clips/new.wav"
    # a removal since: rebuilt, and the removed file is never returned
    catalogue.remove(["/clips/new.wav"])
    index = WavLinkIndex.open(path, ann=True)
    assert builds == [1] and index.search(embedding=extra[0], k=1)[0].path != "/clips/new.wav"
    # a corrupt graph file, or a stamp that does not match it: rebuilt, not trusted
    graph_path.write_bytes(b"not a faiss index")
    WavLinkIndex.open(path, ann=True)
    assert builds == [1, 1]
    stamp = json.loads(stamp_path.read_text())
    stamp_path.write_text(json.dumps({**stamp, "count": 5}))
    WavLinkIndex.open(path, ann=True)
    assert builds == [1, 1, 1] and json.loads(stamp_path.read_text())["count"] == 1000


def test_an_interrupted_index_run_leaves_a_consistent_ann_file(setup, tmp_path, monkeypatch):
    files, model_dir = setup
    sounds = copy_sounds(files, tmp_path / "sounds")
    out = tmp_path / "s.index"
    build_index(sounds, str(model_dir), out, dim=8, chunk=2, ann_threshold=1, progress=False)
    graph_path, stamp_path = ann_module.ann_paths(out)
    assert json.loads(stamp_path.read_text())["count"] == 8
    for file in files[:4]:
        os.utime(sounds / file.name, (1e9, 1e9))  # changed: re-embedded in two chunks
    import pipeline_wavlink

    interrupt_call(monkeypatch, pipeline_wavlink, "iter_audio_embeddings", 2)  # the second chunk
    with pytest.raises(KeyboardInterrupt):
        build_index(sounds, str(model_dir), out, dim=8, chunk=2, ann_threshold=1, progress=False)
    catalogue = AudioIndex.open(out)
    assert json.loads(stamp_path.read_text())["version"] < catalogue.version  # the graph is behind: stale
    index = WavLinkIndex.open(out, ann=True)  # detected and brought up to date from the catalogue
    assert index.ann.index.ntotal == len(index.table) == 8
    assert json.loads(stamp_path.read_text())["version"] == catalogue.version
    query = index.table.float32()[5]
    assert index.search(embedding=query, k=1)[0].path == index.table.paths[5]


def test_a_version_2_index_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.index"
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("CREATE TABLE items (path TEXT PRIMARY KEY, size INTEGER, mtime REAL, duration REAL, "
                   "embedding BLOB, scale REAL)")  # fmt: skip
        meta = {"format": "wavlink-index", "version": "2", "dim": "4", "quantization": "float32", "model": "m",
                "model_fingerprint": "f"}  # fmt: skip
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        vector = np.asarray([0.6, 0.8, 0, 0], np.float32)
        db.execute("INSERT INTO items VALUES ('/a.wav', 1, 1.0, 2.5, ?, 1.0)", (vector.tobytes(),))
    db.close()
    index = WavLinkIndex.open(path)
    hit = index.search(embedding=vector, k=1)[0]
    assert (hit.path, hit.start, hit.end, hit.duration) == ("/a.wav", 0.0, 2.5, 2.5)
    assert AudioIndex.open(path).meta["version"] == "3"


def test_search_errors_are_clear(setup, tmp_path):
    files, model_dir = setup
    sounds = copy_sounds(files, tmp_path / "sounds")
    build_index(sounds, str(model_dir), tmp_path / "s.index", dim=8, progress=False)
    index = WavLinkIndex.open(tmp_path / "s.index")
    with pytest.raises(ValueError, match="exactly one of text=, audio= or embedding="):
        index.search(text="x", embedding=np.zeros(8))
    with pytest.raises(ValueError, match="width 5; this index stores 8"):
        index.search(embedding=np.zeros(5))
    with pytest.raises(ValueError, match="k must be a positive whole number"):
        index.search(text="x", k=0)
    with pytest.raises(ValueError, match="--segment_overlap must be at least 0 and less than --segment_seconds"):
        build_index(sounds, str(model_dir), tmp_path / "t.index", segment_seconds=5, segment_overlap=5)
