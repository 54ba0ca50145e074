import os
import shutil
import sqlite3
import time

import numpy as np
import pytest
import torch
from conftest import interrupt_call, run_two_cpu_processes, tiny_model, tiny_processor

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
    assert again["added"] == 0 and again["unchanged"] == 12
    # a touched file is re-embedded, and only it
    target = sorted(sounds.glob("*.wav"))[1]
    os.utime(target, (time.time() + 5, time.time() + 5))
    assert build_index(sounds, str(model_dir), out, dim=8, progress=False)["updated"] == 1

    # an audio query finds itself first with cosine 1
    hits = search(out, audio=str(target), k=3)
    assert hits[0][1] == str(target.resolve()) and hits[0][0] == pytest.approx(1.0, abs=1e-5)
    text_hits = search(out, query="white noise", k=4)
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
        return sqlite3.connect(tmp_path / name).execute("SELECT sum(length(embedding)) FROM vectors").fetchone()[0]

    assert stored("q.index") * 4 == stored("f.index") == 12 * 16 * 4


def test_an_interrupted_run_keeps_what_it_wrote(setup, tmp_path, monkeypatch):
    sounds, model_dir = setup
    out = tmp_path / "partial.index"
    import pipeline_wavlink

    real_call = pipeline_wavlink.iter_audio_embeddings
    interrupt_call(monkeypatch, pipeline_wavlink, "iter_audio_embeddings", 3)  # the third chunk
    with pytest.raises(KeyboardInterrupt):
        build_index(sounds, str(model_dir), out, dim=8, chunk=3, progress=False)
    committed = sum(f.name != "corrupt.wav" for f in wavlink_index.find_audio(sounds)[:6])  # two chunks of 3 files
    assert len(AudioIndex.open(out)) == committed
    monkeypatch.setattr(pipeline_wavlink, "iter_audio_embeddings", real_call)
    report = build_index(sounds, str(model_dir), out, dim=8, chunk=3, progress=False)
    assert report["added"] == 12 - committed and report["unchanged"] == committed and report["total_in_index"] == 12


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
            "--dim: dim=5 is not a Matryoshka size",
        ),
    ]
    # size options are checked at the door (a negative batch size once stored all-zero vectors)
    for flag, value in (("--batch_size", "-1"), ("--batch_size", "0"), ("--chunk", "0")):
        argv = [str(sounds), "--model", str(model_dir), "--out", str(tmp_path / "y.index"), flag, value]
        cases.append((wavlink_index.index_main, argv, f"{flag} must be a positive whole number, got {value}"))
    (tmp_path / "a_file").write_text("not a folder")
    argv = [str(sounds), "--model", str(model_dir), "--out", str(tmp_path / "a_file" / "x.index")]
    cases.append((wavlink_index.index_main, argv, "a_file"))
    (tmp_path / "corrupt.index").write_bytes(b"this is not sqlite" * 100)
    cases.append(
        (wavlink_index.search_main, [str(tmp_path / "corrupt.index"), "query"], "not a WavLink index or is corrupt")
    )
    other = sqlite3.connect(tmp_path / "other.index")
    other.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    other.execute("CREATE TABLE items (path TEXT)")
    other.commit()
    cases.append((wavlink_index.search_main, [str(tmp_path / "other.index"), "query"], "not a WavLink index"))
    build_index(sounds, str(model_dir), tmp_path / "k.index", dim=8, progress=False)
    cases.append((wavlink_index.search_main, [str(tmp_path / "k.index"), "a tone", "-k", "0"], "-k must be a positive"))
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
    assert "10 added, 0 updated, 0 removed, 0 unchanged" in capsys.readouterr().out
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
    assert "12 added" in result.stdout and "1 unreadable" in result.stdout
    one_paths, _, one = AudioIndex.open(tmp_path / "one.index").load()
    two_paths, _, two = AudioIndex.open(tmp_path / "two.index").load()
    assert sorted(one_paths) == sorted(two_paths) and single["added"] == 12
    order = [two_paths.index(p) for p in one_paths]
    np.testing.assert_allclose(two[order], one, atol=1e-5)


@pytest.mark.slow
def test_shards_per_process_merge_into_the_single_process_index(setup, tmp_path, capsys):
    sounds, model_dir = setup
    single = build_index(sounds, str(model_dir), tmp_path / "one.index", dim=8, progress=False)
    out = tmp_path / "big.index"
    command = ["-m", "wavlink.search", str(sounds), "--model", str(model_dir), "--out", str(out), "--dim", "8",
               "--shards", "--no_progress"]  # fmt: skip
    result = run_two_cpu_processes(command)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted(tmp_path.glob("big.index.shard-*"))
    assert [s.name for s in shards] == ["big.index.shard-00000-of-00002", "big.index.shard-00001-of-00002"]
    assert not out.exists()  # no process wrote the shared file
    sizes = [len(AudioIndex.open(s)) for s in shards]
    assert sum(sizes) == 12 and min(sizes) > 0
    assert wavlink_index.index_main(["merge", *map(str, shards), "--out", str(out)]) == 0
    assert "2 shards: 12 files, 12 vectors" in capsys.readouterr().out
    one_paths, _, one = AudioIndex.open(tmp_path / "one.index").load()
    merged_paths, _, merged = AudioIndex.open(out).load()
    assert sorted(merged_paths) == sorted(one_paths) and single["added"] == 12
    order = [merged_paths.index(p) for p in one_paths]
    np.testing.assert_allclose(merged[order], one, atol=1e-5)
    # shards of different settings do not merge
    build_index(sounds, str(model_dir), tmp_path / "other.index", dim=4, progress=False)
    assert wavlink_index.index_main(["merge", str(shards[0]), str(tmp_path / "other.index"), "--out",
                                     str(tmp_path / "bad.index")]) == 2  # fmt: skip
    assert "differs from" in capsys.readouterr().err and not (tmp_path / "bad.index").exists()


def test_batch_sizes_are_checked_at_the_door(setup):
    from pipeline_wavlink import WavLinkEmbeddingPipeline
    from wavlink.loading import load_model_and_processor

    _, model_dir = setup
    model, processor = load_model_and_processor(str(model_dir))
    embed = WavLinkEmbeddingPipeline(model=model, processor=processor, device=-1)
    for size in (-1, 0, 2.5):
        with pytest.raises(ValueError, match=f"batch_size must be a positive whole number, got {size}"):
            embed(text=["a tone"], batch_size=size)
    with pytest.raises(ValueError, match="--batch_size must be a positive"):
        build_index(setup[0], str(model_dir), "unused.index", batch_size=-1, progress=False)


def test_only_finite_unit_vectors_are_stored(setup, tmp_path, monkeypatch):
    import pipeline_wavlink

    sounds, model_dir = setup
    index = AudioIndex.create(tmp_path / "v.index", "m", 4, False, "fingerprint")
    for vector in ([0.0, 0, 0, 0], [np.nan, 1, 0, 0], [2.0, 0, 0, 0]):
        with pytest.raises(ValueError, match="refusing to store 1 embedding"):
            index.add([("x.wav", 1, 1.0, 1.0)], np.asarray([vector], dtype=np.float32))
    assert len(index) == 0
    # a model that returns zero vectors: every file is reported, nothing is stored
    real_loop = pipeline_wavlink.iter_audio_embeddings

    def zero_vectors(*args, **kwargs):
        for batch in real_loop(*args, **kwargs):
            batch.embeds[:] = 0
            yield batch

    monkeypatch.setattr(pipeline_wavlink, "iter_audio_embeddings", zero_vectors)
    report = build_index(sounds, str(model_dir), tmp_path / "zeros.index", dim=8, progress=False)
    assert report["added"] == 0 and report["total_in_index"] == 0
    assert sum("not finite and unit-norm" in f for f in report["failures"]) == 12


def test_an_index_refuses_a_model_with_other_weights(setup, tmp_path, capsys):
    sounds, model_dir = setup
    other_dir = tmp_path / "other-model"
    shutil.copytree(model_dir, other_dir)
    from wavlink.loading import load_model_and_processor

    other, _ = load_model_and_processor(str(other_dir))
    with torch.no_grad():
        other.audio_projection.weight.mul_(-1)  # same config and Matryoshka sizes, other embedding space
    other.save_pretrained(other_dir)
    out = tmp_path / "sounds.index"
    build_index(sounds, str(model_dir), out, dim=8, progress=False)
    # searching with another model's weights
    assert wavlink_index.search_main([str(out), "a tone", "--model", str(other_dir), "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert "weights differ" in err and "Rebuild the index" in err and "Traceback" not in err
    # the model folder replaced in place, then re-indexing: refused, nothing mixed in
    moved = tmp_path / "original-model"
    shutil.move(str(model_dir), moved)
    shutil.copytree(other_dir, model_dir)
    try:
        os.utime(sorted(sounds.glob("*.wav"))[0], (time.time() + 9, time.time() + 9))
        with pytest.raises(IndexFileError, match="weights differ"):
            build_index(sounds, str(model_dir), out, dim=8, progress=False)
    finally:
        shutil.rmtree(model_dir)
        shutil.move(str(moved), model_dir)
    assert search(out, query="a tone", k=2)  # the right weights still search it


def test_index_creation_is_atomic_and_safe_to_race(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "raced.index"
    with ThreadPoolExecutor(8) as pool:
        indexes = list(pool.map(lambda _: AudioIndex.create(path, "m", 4, False, "fp"), range(20)))
    assert all(index.meta["model_fingerprint"] == "fp" for index in indexes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raced.index"]  # no temporary file left behind

    def crash(source, target):
        raise OSError("killed while creating")

    monkeypatch.setattr(os, "link", crash)
    with pytest.raises(OSError, match="killed"):
        AudioIndex.create(tmp_path / "crashed.index", "m", 4, False, "fp")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raced.index"]  # no half-made index
    assert AudioIndex.create(tmp_path / "crashed.index", "m", 4, False, "fp").meta["dim"] == "4"


def test_opening_a_folder_or_an_index_runs_no_code_from_it(setup, tmp_path, monkeypatch):
    from wavlink.loading import load_model_and_processor

    sounds, model_dir = setup
    planted = tmp_path / "planted"
    shutil.copytree(model_dir, planted)
    marker = tmp_path / "code-ran"
    for module in ("configuration_wavlink.py", "modeling_wavlink.py", "processing_wavlink.py"):
        source = (planted / module).read_text()
        (planted / module).write_text(f"open({str(marker)!r}, 'a').write({module!r})\n" + source)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked whether to run the folder's code"))
    model, processor = load_model_and_processor(str(planted))
    out = tmp_path / "planted.index"
    build_index(sounds, str(planted), out, dim=8, progress=False)
    assert search(out, query="a tone", k=1)  # the model recorded in the index is loaded
    assert not marker.exists(), "code from the model folder ran"
    # asked for explicitly, remote code does run (so the check above can fail)
    load_model_and_processor(str(planted), trust_remote_code=True)
    assert marker.exists()
