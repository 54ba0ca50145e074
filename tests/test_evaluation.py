import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_two_cpu_processes, tiny_model, tiny_processor
from huggingface_hub import ModelCard

from wavlink.evaluation import cli as eval_cli
from wavlink.evaluation.embedding import embed_clips, embed_texts
from wavlink.evaluation.metrics import retrieval_metrics
from wavlink.evaluation.readers import read_classification_set, read_multiple_choice_set, read_retrieval_set
from wavlink.evaluation.tasks import evaluate_multiple_choice, multiple_choice_text
from wavlink.training.synthetic import generate_dataset

CAPTION_WORDS = [
    "a steady low pitched sine tone",
    "white noise",
    "three short beeps",
    "a rising sweep",
    "a high tone",
    "this is a sound of tone",
    "noise",
    "beeps",
    "sweep",
    "what is it?",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths = generate_dataset(root, num_train=0, num_eval=24, seed=3)
    rows = list(csv.DictReader(open(paths["eval"])))
    return root, rows


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, corpus):
    _, rows = corpus
    captions = [c for r in rows for c in json.loads(r["caption"])] + CAPTION_WORDS
    folder = tmp_path_factory.mktemp("model")
    model = tiny_model(seed=3, base_models=["openai/whisper-tiny.en", "sentence-transformers/all-MiniLM-L6-v2"])
    processor = tiny_processor(captions)
    model.text_model.resize_token_embeddings(len(processor.tokenizer))
    model.config.text_config.vocab_size = len(processor.tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_clotho(corpus, path):
    root, rows = corpus
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        for row in rows:
            captions = json.loads(row["caption"])
            writer.writerow([row["audio"]] + (captions * 2)[:5])
    return path


def test_clotho_layout_end_to_end(corpus, saved_model, tmp_path, capsys):
    root, rows = corpus
    table = write_clotho(corpus, root / "clotho_eval.csv")
    assert (
        eval_cli.main(
            ["retrieval", "--model", str(saved_model), "--data", str(table), "--out", str(tmp_path), "--no_progress"]
        )
        == 0
    )
    record = json.loads((tmp_path / "retrieval-clotho_eval.json").read_text())
    assert (
        list(record["results"]) == ["16", "8", "4", "2"] and record["num_clips"] == 24 and record["num_captions"] == 120
    )
    assert (tmp_path / "retrieval-clotho_eval.png").stat().st_size > 5000
    assert "| 16 |" in (tmp_path / "retrieval-clotho_eval.md").read_text()
    # independent check: the same numbers from embeddings computed one clip and one caption at a time
    from wavlink.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(saved_model))
    data = read_retrieval_set(table)
    with torch.no_grad():
        audio = torch.cat([model.get_audio_features(**processor(audio=c)).pooler_output for c in data.clips]).numpy()
        texts = [c for caps in data.captions for c in caps]
        text = torch.cat([model.get_text_features(**processor(text=t)).pooler_output for t in texts]).numpy()
    expected = retrieval_metrics(text @ audio.T, np.repeat(np.arange(24), 5))
    for key, value in expected.items():
        assert record["results"]["16"][key] == pytest.approx(value, abs=1e-6), key


def test_audiocaps_layout_groups_rows_per_clip(corpus, tmp_path):
    root, rows = corpus
    table = tmp_path / "audiocaps_test.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        for i, row in enumerate(rows[:3]):
            for j, caption in enumerate(json.loads(row["caption"])):
                writer.writerow([i * 10 + j, Path(row["audio"]).stem, 0, caption])
    data = read_retrieval_set(table, audio_dir=root / "audio")
    assert len(data.clips) == 3 and [len(c) for c in data.captions] == [3, 3, 3]
    with pytest.raises(FileNotFoundError, match="1 audio file"):
        table.write_text(table.read_text() + "99,nope,0,a caption\n")
        read_retrieval_set(table, audio_dir=root / "audio")


def make_esc50(corpus, folder: Path):
    root, rows = corpus
    (folder / "meta").mkdir(parents=True)
    (folder / "audio").mkdir()
    with open(folder / "meta" / "esc50.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for i, row in enumerate(rows):
            name = Path(row["audio"]).name
            os.symlink(root / row["audio"], folder / "audio" / name)
            kind = name.split("_")[-1][:-4]
            writer.writerow([name, 1 + i % 2, 0, kind, False, i, "A"])
    return folder


def test_esc50_layout_end_to_end_with_fold_filter(corpus, saved_model, tmp_path):
    folder = make_esc50(corpus, tmp_path / "ESC-50")
    data = read_classification_set(folder, fold=1)
    assert len(data.clips) == 12 and data.labels == ["beeps", "mixture", "noise", "sweep", "tone"]
    out = tmp_path / "out"
    args = [
        "zero-shot",
        "--model",
        str(saved_model),
        "--data",
        str(folder),
        "--fold",
        "1",
        "--out",
        str(out),
        "--templates",
        "this is a sound of {label}.",
        "{label}",
        "--no_progress",
        "--model_card",
    ]
    assert eval_cli.main(args) == 0
    record = json.loads((out / "zero-shot-ESC-50.json").read_text())
    assert (
        record["num_clips"] == 12
        and record["fold"] == 1
        and set(record["results"]["16"]) == {"top1_accuracy", "top5_accuracy"}
    )
    assert record["results"]["16"]["top5_accuracy"] == 100.0  # only 5 classes
    card = ModelCard.load(saved_model / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "zero-shot-audio-classification"
    assert {r.metric_type for r in card.data.eval_results} == {"top1_accuracy", "top5_accuracy"}
    assert {r.task_type for r in card.data.eval_results} == {"zero-shot-audio-classification"}  # a Hub task id
    assert card.data.base_model == ["openai/whisper-tiny.en", "sentence-transformers/all-MiniLM-L6-v2"]
    assert card.data.language == "en"
    assert "## Limitations" in card.text and "trust_remote_code=True" in card.text


def test_folder_and_csv_layouts(corpus, tmp_path):
    root, rows = corpus
    for row in rows[:4]:
        kind = row["audio"].split("_")[-1][:-4]
        (tmp_path / "folder" / kind).mkdir(parents=True, exist_ok=True)
        os.symlink(root / row["audio"], tmp_path / "folder" / kind / Path(row["audio"]).name)
    data = read_classification_set(tmp_path / "folder")
    assert len(data.clips) == 4 and data.labels == sorted({r["audio"].split("_")[-1][:-4] for r in rows[:4]})
    (tmp_path / "labels.csv").write_text(
        "audio,label\n" + "\n".join(f"{root / r['audio']},x{i % 2}" for i, r in enumerate(rows[:6]))
    )
    assert read_classification_set(tmp_path / "labels.csv").labels == ["x0", "x1"]


def test_multiple_choice_picks_the_nearest_question_and_option(corpus, saved_model, tmp_path):
    root, rows = corpus
    items = [
        {
            "path": row["audio"],
            "question": "what is it?",
            "choice_a": "a rising sweep",
            "choice_b": "white noise",
            "choice_c": "three short beeps",
            "answer_gt": "white noise" if i % 2 else "B",
        }
        for i, row in enumerate(rows[:6])
    ]
    (root / "mc.json").write_text(json.dumps(items))
    data = read_multiple_choice_set(root / "mc.json")
    assert data.answers == [1] * 6
    from wavlink.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(saved_model))
    results = evaluate_multiple_choice(model, processor, data, progress=False)
    audio = embed_clips(model, processor, data.clips, progress=False)
    options = embed_texts(
        model, processor, [multiple_choice_text("what is it?", o) for o in data.options[0]], progress=False
    )
    expected = 100 * np.mean((audio @ options.T).argmax(1) == 1)
    assert results[16]["accuracy"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="item 0: answer 'Z'"):
        (root / "bad.json").write_text(json.dumps([{**items[0], "answer_gt": "Z"}]))
        read_multiple_choice_set(root / "bad.json")


def test_clear_errors(saved_model, tmp_path, capsys):
    assert eval_cli.main(["retrieval", "--model", str(tmp_path / "nope"), "--data", "x.csv"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "t.csv").write_text("audio,text\na.wav,x\n")
    assert eval_cli.main(["retrieval", "--model", str(saved_model), "--data", str(tmp_path / "t.csv")]) == 2
    assert "caption_column='caption' is not a column" in capsys.readouterr().err
    assert (
        eval_cli.main(["retrieval", "--model", str(saved_model), "--data", str(tmp_path / "t.csv"), "--dims", "5"]) == 2
    )


@pytest.mark.slow
def test_two_processes_give_the_single_process_results(corpus, saved_model, tmp_path):
    root, _ = corpus
    table = write_clotho(corpus, root / "clotho_two.csv")
    # batch size 5 over 24 clips: uneven, so accelerate pads the last batches and gather_for_metrics must drop them
    single = tmp_path / "single"
    assert (
        eval_cli.main(
            [
                "retrieval",
                "--model",
                str(saved_model),
                "--data",
                str(table),
                "--out",
                str(single),
                "--batch_size",
                "5",
                "--no_progress",
            ]
        )
        == 0
    )
    result = run_two_cpu_processes(
        [
            "-m",
            "wavlink.evaluation",
            "retrieval",
            "--model",
            str(saved_model),
            "--data",
            str(table),
            "--out",
            str(tmp_path / "double"),
            "--batch_size",
            "5",
            "--no_progress",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((single / "retrieval-clotho_two.json").read_text())["results"]
    two = json.loads((tmp_path / "double" / "retrieval-clotho_two.json").read_text())
    assert two["num_clips"] == 24 and two["num_captions"] == 120
    for dim, metrics in one.items():
        for key, value in metrics.items():
            assert two["results"][dim][key] == pytest.approx(value, abs=1e-6), (dim, key)


@pytest.mark.fixtures
def test_real_animals_as_a_10_way_zero_shot_set(fixtures, real_model, real_processor, tmp_path, capsys):
    saved = tmp_path / "real"
    real_model.save_pretrained(saved)
    real_processor.save_pretrained(saved)
    folder = tmp_path / "animals"
    for path in sorted((fixtures / "audio" / "animals").glob("*.mp3")):
        (folder / path.stem).mkdir(parents=True)
        os.symlink(path, folder / path.stem / path.name)
    out = tmp_path / "out"
    assert (
        eval_cli.main(["zero-shot", "--model", str(saved), "--data", str(folder), "--out", str(out), "--no_progress"])
        == 0
    )
    record = json.loads((out / "zero-shot-animals.json").read_text())
    assert record["num_classes"] == 10 and list(record["results"]) == ["256", "128", "64", "32"]
    for metrics in record["results"].values():
        assert 0 <= metrics["top1_accuracy"] <= 100 and metrics["top5_accuracy"] >= metrics["top1_accuracy"]
    print(capsys.readouterr().out)


def test_each_distinct_text_is_embedded_once_and_identical_texts_tie_exactly(saved_model):
    from wavlink.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(saved_model))
    rows_embedded, text_features = [], model.get_text_features

    def counting(**inputs):
        rows_embedded.append(inputs["input_ids"].shape[0])
        return text_features(**inputs)

    model.get_text_features = counting
    texts = ["white noise", "a rising sweep", "white noise", "three short beeps", "white noise"]
    embeds = embed_texts(model, processor, texts, batch_size=2, progress=False)
    assert sum(rows_embedded) == 3 and embeds.shape == (5, 16)
    assert np.array_equal(embeds[0], embeds[2]) and np.array_equal(embeds[0], embeds[4])
    with torch.no_grad():
        alone = text_features(**processor(text=["a rising sweep"])).pooler_output[0].numpy()
    np.testing.assert_allclose(embeds[1], alone, atol=1e-5)
    # texts the (uncased) tokenizer cannot tell apart are one text too
    rows_embedded.clear()
    cased = embed_texts(
        model, processor, ["White Noise", "a rising sweep", "white noise"], batch_size=1, progress=False
    )
    assert sum(rows_embedded) == 2 and np.array_equal(cased[0], cased[2])


def test_batch_size_below_one_is_one_clear_error(corpus, saved_model, tmp_path, capsys):
    table = write_clotho(corpus, corpus[0] / "clotho_batch.csv")
    for size in ("0", "-2"):
        argv = ["retrieval", "--model", str(saved_model), "--data", str(table), "--batch_size", size, "--no_progress"]
        assert eval_cli.main(argv) == 2
        assert f"batch_size must be a positive whole number, got {size}" in capsys.readouterr().err
