"""A real mteb audio task class, run fully offline on the fixture recordings, scores what `wavlink-eval` scores."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.fixtures
mteb = pytest.importorskip("mteb")


def local_esc50_task(files: list[str], labels: list[str], targets: list[int]):
    """mteb's own ESC50_Zeroshot task class, with its data set made locally (no Hub download) and its prompts for
    the local labels (same template as ESC-50's: "This is a sound of {label}")."""
    import datasets
    from mteb.tasks.zeroshot_classification.zxx.esc50 import ESC50ZeroshotClassification

    class LocalESC50Zeroshot(ESC50ZeroshotClassification):
        def load_data(self, **kwargs):
            table = datasets.Dataset.from_dict({"audio": files, "target": targets})
            self.dataset = datasets.DatasetDict({"train": table.cast_column("audio", datasets.Audio())})
            self.data_loaded = True

        def get_candidate_labels(self):
            return [f"This is a sound of {label}" for label in labels]

    return LocalESC50Zeroshot()


def test_mteb_zero_shot_equals_wavlink_eval(saved_real_model, animal_files, tmp_path):
    from wavlink.evaluation import cli as eval_cli
    from wavlink.mteb import WavLinkMtebEncoder

    # two recordings per class: each file and a copy shifted by 0.3 s, in a folder per class for wavlink-eval
    labels = sorted(Path(f).stem for f in animal_files)
    files, targets = [], []
    import soundfile

    for file in animal_files:
        label = Path(file).stem
        (tmp_path / "classes" / label).mkdir(parents=True)
        waveform, rate = soundfile.read(file)
        for name, audio in (("a.wav", waveform), ("b.wav", waveform[int(0.3 * rate) :])):
            soundfile.write(tmp_path / "classes" / label / name, audio, rate)
            files.append(str(tmp_path / "classes" / label / name))
            targets.append(labels.index(label))

    encoder = WavLinkMtebEncoder(str(saved_real_model), device="cpu")
    meta = encoder.mteb_model_meta
    assert meta.modalities == ["audio", "text"] and meta.similarity_fn_name == "cosine"
    assert meta.embed_dim == encoder.model.config.matryoshka_dims
    results = mteb.evaluate(encoder, tasks=[local_esc50_task(files, labels, targets)], cache=None)
    accuracy = results.task_results[0].scores["train"][0]["accuracy"]

    out = tmp_path / "eval"
    args = ["zero-shot", "--model", str(saved_real_model), "--data", str(tmp_path / "classes"), "--layout", "folder",
            "--templates", "This is a sound of {label}", "--out", str(out), "--no_progress"]  # fmt: skip
    assert eval_cli.main(args) == 0
    record = json.loads(next(out.glob("*.json")).read_text())
    top1 = record["results"][str(encoder.model.config.projection_dim)]["top1_accuracy"]
    assert 100 * accuracy == pytest.approx(top1, abs=1e-6)
    assert 0 < top1 < 100  # a score both can get wrong in different ways, not a degenerate 0 or 100
