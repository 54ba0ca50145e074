"""Publishing through a local test Hub over real HTTP, then loading by repo id in fresh processes."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, TINY_CAPTIONS, noise, tiny_model, tiny_processor
from hub_server import LocalHub
from huggingface_hub import ModelCard

from pipeline_wavlink import WavLinkEmbeddingPipeline


def run_fresh(code: str, hub: LocalHub, home, cwd) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(home),
        "HF_TOKEN": "hf_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.fixture()
def hub():
    with LocalHub() as server:
        yield server


def test_push_to_hub_then_load_by_repo_id_in_a_fresh_process(hub, tmp_path):
    model, processor = tiny_model(seed=1), tiny_processor()
    clips = [noise(1.2, seed=1), noise(2.0, seed=2)]
    np.save(tmp_path / "clips.npy", np.stack([np.pad(c, (0, 32000 - len(c))) for c in clips]))
    with torch.no_grad():
        expected = model(**processor(audio=clips, sampling_rate=16000, text=TINY_CAPTIONS[:2]))
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)

    # the user's flow: model.push_to_hub + processor.push_to_hub, from a process that imports the package
    run_fresh(
        f"""
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(saved)!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(saved)!r}, trust_remote_code=True)
        model.push_to_hub("me/wavlink-tiny")
        processor.push_to_hub("me/wavlink-tiny")
        """,
        hub,
        tmp_path / "home-push",
        tmp_path,
    )
    files = hub.files("me/wavlink-tiny")
    for name in (
        "model.safetensors",
        "config.json",
        "configuration_wavlink.py",
        "modeling_wavlink.py",
        "processing_wavlink.py",
        "pipeline_wavlink.py",
        "processor_config.json",
        "tokenizer.json",
    ):
        assert name in files, name
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)

    # a fresh process with an empty cache loads it by repo id, over HTTP, through remote code
    run_fresh(
        f"""
        import numpy as np, torch
        from transformers import AutoModel, AutoProcessor, pipeline
        model = AutoModel.from_pretrained("me/wavlink-tiny", trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained("me/wavlink-tiny", trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        raw = np.load({str(tmp_path / "clips.npy")!r})
        clips = [raw[0][:{len(clips[0])}], raw[1][:{len(clips[1])}]]
        with torch.no_grad():
            out = model(**processor(audio=clips, sampling_rate=16000, text={TINY_CAPTIONS[:2]!r}))
        np.save("audio.npy", out.audio_embeds.numpy())
        embed = pipeline(model="me/wavlink-tiny", trust_remote_code=True)
        np.save("pipeline.npy", embed(audio=[{{"array": c, "sampling_rate": 16000}} for c in clips], dim=4))
        """,
        hub,
        tmp_path / "home-load",
        tmp_path,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "audio.npy"), expected.audio_embeds.numpy())
    pipeline_embeds = np.load(tmp_path / "pipeline.npy")
    reference = torch.nn.functional.normalize(expected.audio_embeds[:, :4], dim=-1).numpy()
    np.testing.assert_allclose(pipeline_embeds, reference, atol=1e-6)
    # the weights really came over HTTP from the test hub
    assert any(
        method == "GET" and re.fullmatch(r"/me/wavlink-tiny/resolve/[^/]+/model.safetensors", path)
        for method, path in hub.state.requests
    )


def test_wavlink_push_writes_a_model_card_and_pushes_lora_adapters(hub, tmp_path):
    import train
    from wavlink.training.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "data", num_train=32, num_eval=8, seed=2)
    tiny = {
        "audio_config": {
            "d_model": 32,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "decoder_layers": 1,
            "decoder_attention_heads": 2,
            "decoder_ffn_dim": 32,
        },
        "text_config": {
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
        "projection_dim": 16,
        "per_device_train_batch_size": 8,
        "train_files": [str(data["train"])],
        "eval_file": str(data["eval"]),
        "report_to": "none",
        "save_steps": None,
        "max_audio_seconds": 2.0,
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**tiny, "max_steps": 1}))
    _, _, base_final = train.train([str(tmp_path / "base.yaml"), "--output_dir", str(tmp_path / "base")])
    lora = {k: v for k, v in tiny.items() if k not in ("audio_config", "text_config")}
    (tmp_path / "lora.yaml").write_text(
        yaml.safe_dump(
            {**lora, "max_steps": 2, "finetune": "lora", "lora_rank": 2, "model_name_or_path": str(base_final)}
        )
    )
    lora_model, processor, lora_final = train.train(
        [str(tmp_path / "lora.yaml"), "--output_dir", str(tmp_path / "lora")]
    )

    assert lora_model.get_base_model().config.base_models == [str(base_final)]  # the parent, not its towers
    from wavlink.hub.push import main as push

    assert push([str(tmp_path / "data"), "me/not-a-model"]) == 2  # a folder with no model: one clear error
    run_fresh(
        f"""
        from wavlink.hub.push import push_folder
        push_folder({str(base_final)!r}, "me/wavlink-base")
        push_folder({str(lora_final)!r}, "me/wavlink-lora")
        """,
        hub,
        tmp_path / "home-push",
        tmp_path,
    )
    card = hub.files("me/wavlink-base")["README.md"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "zero-shot-audio-classification"
    assert "wavlink" in metadata["tags"] and "## Usage" in card and "## Limitations" in card
    # the held-out evaluation of the training run is in the card's model-index and its tables
    results = metadata["model-index"][0]["results"]
    assert {r["dataset"]["name"] for r in results} == {"held-out"} and "### retrieval: held-out" in card
    adapter_files = hub.files("me/wavlink-lora")
    assert "adapter_model.safetensors" in adapter_files and "model.safetensors" not in adapter_files
    assert yaml.safe_load(adapter_files["README.md"].decode().split("---")[1])["library_name"] == "peft"

    clip = str(data["eval"].parent / "audio" / "eval_00000_tone.wav")
    with torch.no_grad():
        expected = lora_model.eval()(**processor(audio=[clip], text=["a tone"])).audio_embeds.numpy()
    run_fresh(
        f"""
        import numpy as np, torch
        from peft import PeftModel
        from transformers import AutoModel, AutoProcessor
        base = AutoModel.from_pretrained("me/wavlink-base", trust_remote_code=True)
        model = PeftModel.from_pretrained(base, "me/wavlink-lora").eval()
        processor = AutoProcessor.from_pretrained("me/wavlink-lora", trust_remote_code=True)
        with torch.no_grad():
            np.save("lora.npy", model(**processor(audio=[{clip!r}], text=["a tone"])).audio_embeds.numpy())
        """,
        hub,
        tmp_path / "home-load",
        tmp_path,
    )
    np.testing.assert_allclose(np.load(tmp_path / "lora.npy"), expected, atol=1e-6)


def test_cards_name_the_base_model_and_language(tmp_path):
    import json

    from wavlink.hub.cards import write_model_card

    towers = ["openai/whisper-base", "openai/clip-vit-base-patch32"]
    model = tiny_model(base_models=towers + [str(tmp_path)])  # a local folder is no Hub id: left out
    model.save_pretrained(tmp_path / "full")
    record = {"task": "retrieval", "dataset": "clotho", "results": {"16": {"t2a_R@1": 12.5}, "8": {"t2a_R@1": 9.0}}}
    card = ModelCard.load(write_model_card(tmp_path / "full", "me/full", records=[record]))
    assert card.data.base_model == towers and card.data.language == "en"
    assert [r.task_type for r in card.data.eval_results] == ["feature-extraction"]  # the Hub's id for embeddings
    assert card.data.eval_results[0].metric_type == "t2a_R@1"  # the project's own metric name
    # a LoRA adapter's base is the checkpoint it applies to
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    base = {"model_name_or_path": "me/wavlink-base", "config": model.config.to_dict()}
    (adapter / "wavlink_base.json").write_text(json.dumps(base))
    card = ModelCard.load(write_model_card(adapter, "me/lora"))
    assert card.data.base_model == ["me/wavlink-base"] and card.data.library_name == "peft"


def test_pipeline_item_by_item_steps_equal_the_batched_call():
    model, processor = tiny_model(seed=2), tiny_processor()
    pipe = WavLinkEmbeddingPipeline(model=model, processor=processor, device=torch.device("cpu"))
    clip = {"array": noise(1.5, seed=3), "sampling_rate": 16000}
    for item in (clip, TINY_CAPTIONS[0]):
        preprocess, forward, _ = pipe._sanitize_parameters(dim=8)
        single = pipe.postprocess(pipe._forward(pipe.preprocess(item, **preprocess), **forward))
        np.testing.assert_allclose(single, pipe(item, dim=8), atol=1e-6)
        assert single.shape == (8,)


@pytest.mark.fixtures
def test_embedding_pipeline_on_real_recordings(real_model, real_processor, animal_files):
    pipe = WavLinkEmbeddingPipeline(model=real_model, processor=real_processor, device=torch.device("cpu"))
    embeds = pipe(audio=animal_files, dim=64, batch_size=4)
    assert embeds.shape == (10, 64) and embeds.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        reference = torch.cat(
            [real_model.get_audio_features(**real_processor(audio=f), dim=64).pooler_output for f in animal_files]
        )
    np.testing.assert_allclose(embeds, reference.numpy(), atol=1e-4)
    text = pipe(text=["a dog barks", "a rooster crows"])
    assert text.shape == (2, 256)
    assert pipe("a cat meows").shape == (256,) and pipe(animal_files[0]).shape == (256,)
    with pytest.raises(ValueError, match="dim=100"):
        pipe(text=["x"], dim=100)
    with pytest.raises(ValueError, match=r"audio\[1\]"):
        pipe(audio=[animal_files[0], "/no/such/file.wav"])


def test_an_index_pins_the_hub_commit_of_its_model(hub, tmp_path):
    from wavlink.training.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "data", num_train=0, num_eval=4, seed=2)
    sounds = data["eval"].parent / "audio"
    saved = tmp_path / "saved"
    model, processor = tiny_model(seed=3), tiny_processor()
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    push = f"""
        from modeling_wavlink import WavLinkModel
        from processing_wavlink import WavLinkProcessor
        model = WavLinkModel.from_pretrained({str(saved)!r})
        {{change}}
        model.push_to_hub("me/wavlink-pinned")
        WavLinkProcessor.from_pretrained({str(saved)!r}).push_to_hub("me/wavlink-pinned")
        """
    run_fresh(push.format(change="pass"), hub, tmp_path / "home", tmp_path)
    out = tmp_path / "pinned.index"
    run_fresh(
        f"""
        from wavlink.search.index import AudioIndex, build_index
        build_index({str(sounds)!r}, "me/wavlink-pinned", {str(out)!r}, dim=8, progress=False)
        print(AudioIndex.open({str(out)!r}).meta.get("model_revision"))
        """,
        hub,
        tmp_path / "home",
        tmp_path,
    )
    # the repo moves on: new weights in a new commit
    run_fresh(push.format(change="model.audio_projection.weight.data.mul_(-1)"), hub, tmp_path / "home2", tmp_path)
    search = f"""
        from wavlink.search.index import search
        print(search({str(out)!r}, query="a tone", k=2{{model}})[0][1])
        """
    # the index loads the commit it was built with (a fresh cache, so nothing is reused), and searches
    assert "wav" in run_fresh(search.format(model=""), hub, tmp_path / "home3", tmp_path)
    # naming the repo explicitly takes its latest weights, which the fingerprint refuses
    with pytest.raises(AssertionError, match="weights differ"):
        run_fresh(search.format(model=', model="me/wavlink-pinned"'), hub, tmp_path / "home4", tmp_path)
