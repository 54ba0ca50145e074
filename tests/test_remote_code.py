"""save_pretrained -> a fresh Python process that cannot import the source modules -> AutoModel/AutoProcessor."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import TINY_CAPTIONS, noise, tiny_model, tiny_processor

# Runs in the child: the source modules are made unimportable, so everything must come from the saved folder.
CHILD_PRELUDE = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            sources = {"configuration_wavlink", "modeling_wavlink", "processing_wavlink", "wavlink", "train"}
            if name.split(".")[0] in sources:
                raise ImportError(f"source module {name} must not be importable here")
    sys.meta_path.insert(0, _Block())
    """
)


def run_child(code: str, cwd) -> str:
    result = subprocess.run(
        [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_saved_folder_has_remote_code_and_auto_map(tmp_path):
    model, processor = tiny_model(), tiny_processor()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for module in ("configuration_wavlink.py", "modeling_wavlink.py", "processing_wavlink.py", "model.safetensors"):
        assert (tmp_path / module).exists(), module
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_wavlink.WavLinkConfig",
        "AutoModel": "modeling_wavlink.WavLinkModel",
    }
    assert (
        json.loads((tmp_path / "processor_config.json").read_text())["auto_map"]["AutoProcessor"]
        == "processing_wavlink.WavLinkProcessor"
    )
    assert not list(tmp_path.glob("*.bin")), "weights must be safetensors only"


def test_fresh_process_reproduces_embeddings_exactly(tmp_path):
    model, processor = tiny_model(), tiny_processor()
    saved = tmp_path / "model"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    clips = [noise(1.3, seed=1), noise(2.2, seed=2)]
    np.save(tmp_path / "clips.npy", np.stack([np.pad(c, (0, 40000 - len(c))) for c in clips]))
    with torch.no_grad():
        batch = processor(audio=clips, sampling_rate=16000, text=TINY_CAPTIONS[:2])
        out = model(**batch)
    stdout = run_child(
        f"""
        import numpy as np, torch
        from transformers import AutoConfig, AutoModel, AutoProcessor
        path = {str(saved)!r}
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__name__ == "WavLinkProcessor" and config.model_type == "wavlink"
        raw = np.load({str(tmp_path / "clips.npy")!r})
        clips = [raw[0][:{len(clips[0])}], raw[1][:{len(clips[1])}]]
        with torch.no_grad():
            out = model(**processor(audio=clips, sampling_rate=16000, text={TINY_CAPTIONS[:2]!r}))
        np.save({str(tmp_path / "audio.npy")!r}, out.audio_embeds.numpy())
        np.save({str(tmp_path / "text.npy")!r}, out.text_embeds.numpy())
        print("ok")
        """,
        cwd=tmp_path,
    )
    assert "ok" in stdout
    np.testing.assert_array_equal(np.load(tmp_path / "audio.npy"), out.audio_embeds.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "text.npy"), out.text_embeds.numpy())


@pytest.mark.fixtures
def test_stock_zero_shot_pipeline_on_real_recordings(tmp_path, fixtures, real_model, real_processor, animal_files):
    saved = tmp_path / "real"
    real_model.save_pretrained(saved)
    real_processor.save_pretrained(saved)
    labels = [f.split("/")[-1][:-4] for f in animal_files]
    stdout = run_child(
        f"""
        import json, numpy as np, soundfile, soxr
        from transformers import pipeline
        classify = pipeline("zero-shot-audio-classification", model={str(saved)!r}, trust_remote_code=True)
        labels = {labels!r}
        results = []
        for path in {animal_files!r}:
            # the stock pipeline decodes files with ffmpeg; hand it 16-kHz mono arrays instead
            audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
            audio = soxr.resample(audio.mean(1), rate, 16000)
            results.append(classify(audio, candidate_labels=labels, hypothesis_template="This is a sound of {{}}."))
        print(json.dumps(results))
        """,
        cwd=tmp_path,
    )
    results = json.loads(stdout.strip().splitlines()[-1])
    assert len(results) == 10
    for ranking in results:
        assert sorted(r["label"] for r in ranking) == sorted(labels)
        assert sum(r["score"] for r in ranking) == pytest.approx(1.0, abs=1e-4)
