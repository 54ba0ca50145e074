import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from conftest import ROOT, run_two_cpu_processes
from safetensors.torch import load_file

import train
from wavlink.training.checkpoints import TrainerState, list_checkpoints, resolve_resume, save_checkpoint
from wavlink.training.data import AudioCaptionDataset, LengthGroupedBatchSampler, load_caption_table, parse_captions
from wavlink.training.synthetic import generate_dataset

TINY = {
    "audio_config": {
        "d_model": 32,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "decoder_layers": 1,
        "decoder_attention_heads": 2,
        "decoder_ffn_dim": 32,
        "dropout": 0.0,
    },
    "text_config": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    },
    "projection_dim": 16,
    "max_audio_seconds": 2.0,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "report_to": "none",
    "seed": 7,
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), num_train=64, num_eval=20, seed=1)


def write_config(path: Path, synthetic, **overrides) -> str:
    values = {**TINY, "train_files": [str(synthetic["train"])], "eval_file": str(synthetic["eval"]), **overrides}
    path.write_text(yaml.safe_dump(values))
    return str(path)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def initial_state(config, synthetic) -> dict[str, torch.Tensor]:
    """The model a run starts from: train.py seeds before building it, so the same seed rebuilds it."""
    from accelerate.utils import set_seed

    model_args, _, args = train.parse_args([config])
    set_seed(args.seed)
    captions = train.sample_captions(load_caption_table(str(synthetic["train"])))
    return train.build_model_and_processor(model_args, captions)[0].state_dict()


def read_log(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--finetune", "everything"], "--finetune"),
        (["--loss_type", "triplet"], "--loss_type"),
        (["--mixed_precision", "fp8"], "--mixed_precision"),
        (["--per_device_train_batch_size", "1"], "--per_device_train_batch_size"),
        (["--train_files", "/does/not/exist.csv"], "--train_files"),
        (["--audio_tower", "x"], "--audio_tower"),
        (["--push_to_hub", "true"], "--hub_model_id"),
        (["--logging_steps", "0"], "--logging_steps"),
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size"),
        (["--eval_steps", "0"], "--eval_steps"),
        (["--dataloader_num_workers", "-1"], "--dataloader_num_workers"),
        (["--global_token_init", "xavier"], "--global_token_init"),
        (["--global_token_init", "frame_mean", "--audio_pooling", "mean"], "--global_token_init.*has none"),
        (["--temperature_init", "0"], "--temperature_init"),
        (["--freeze_towers_ratio", "1"], "--freeze_towers_ratio"),
        (["--freeze_towers_ratio", "0.2", "--finetune", "projector"], "--freeze_towers_ratio.*never trains"),
        (["--freeze_towers_ratio", "0.2", "--lr_scheduler_type", "polynomial"], "lr_scheduler_type.*freeze_towers"),
    ],
)
def test_wrong_values_fail_before_weights_load_naming_the_option(tmp_path, synthetic, flags, needle, monkeypatch):
    config = write_config(tmp_path / "c.yaml", synthetic)
    monkeypatch.setattr(train, "build_model_and_processor", lambda *a: pytest.fail("weights loaded before validation"))
    with pytest.raises(ValueError, match=needle):
        train.train([config, "--output_dir", str(tmp_path / "out"), *flags])


def test_unknown_yaml_key_is_named(tmp_path, synthetic):
    config = write_config(tmp_path / "c.yaml", synthetic, learnig_rate=1.0)
    with pytest.raises(ValueError, match="learnig_rate"):
        train.parse_args([config])


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    for cls in (train.ModelArguments, train.DataArguments, train.TrainArguments):
        for f in cls.__dataclass_fields__.values():
            assert f"--{f.name}" in text and f.metadata.get("help"), f.name


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory, synthetic):
    """A saved WavLink folder (CLIP loss, global token, d=16) to start runs from."""
    from conftest import tiny_model, tiny_processor

    folder = tmp_path_factory.mktemp("checkpoint")
    tiny_model(seed=2).save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


def checkpoint_run_config(path, synthetic, checkpoint, **overrides) -> str:
    config = write_config(
        path, synthetic, model_name_or_path=str(checkpoint), save_steps=None, eval_file=None, **overrides
    )
    values = yaml.safe_load(Path(config).read_text())
    values.pop("audio_config"), values.pop("text_config")
    Path(config).write_text(yaml.safe_dump(values))
    return config


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--projection_dim", "8"], "--projection_dim: 8 differs from the checkpoint's 16"),
        (["--matryoshka_dims", "16", "5", "10"], "--matryoshka_dims: cannot apply"),
        (["--global_token_init", "frame_mean"], "--global_token_init: .* already has a trained global token"),
        (["--temperature_init", "0.05"], "--temperature_init: applies to a new model"),
    ],
)
def test_model_options_that_cannot_apply_to_a_checkpoint_fail_before_weights_load(
    tmp_path, synthetic, saved_checkpoint, flags, needle, monkeypatch
):
    config = checkpoint_run_config(tmp_path / "c.yaml", synthetic, saved_checkpoint, max_steps=1)
    monkeypatch.setattr(
        train, "build_model_and_processor", lambda *a, **k: pytest.fail("weights loaded before validation")
    )
    with pytest.raises(ValueError, match=needle):
        train.train([config, "--output_dir", str(tmp_path / "out"), *flags])


def test_model_options_given_with_a_checkpoint_apply_and_are_saved(tmp_path, synthetic, saved_checkpoint):
    config = checkpoint_run_config(tmp_path / "c.yaml", synthetic, saved_checkpoint, max_steps=1)
    flags = [
        "--loss_type",
        "siglip",
        "--matryoshka_dims",
        "16",
        "4",
        "--audio_pooling",
        "mean",
        "--text_pooling",
        "cls",
        "--projection_dim",
        "16",
    ]
    model, _, final = train.train([config, "--output_dir", str(tmp_path / "out"), *flags])
    saved = json.loads((final / "config.json").read_text())
    assert (saved["loss_type"], saved["matryoshka_dims"], saved["audio_pooling"], saved["text_pooling"]) == (
        "siglip",
        [16, 4],
        "mean",
        "cls",
    )
    trained = weights(final)
    assert "logit_head.logit_bias" in trained and "audio_global_token.embedding" not in trained
    start = weights(saved_checkpoint)
    assert not torch.equal(trained["audio_projection.weight"], start["audio_projection.weight"])
    # options not given keep the checkpoint's values
    _, _, kept = train.train([config, "--output_dir", str(tmp_path / "kept")])
    saved = json.loads((kept / "config.json").read_text())
    assert (saved["loss_type"], saved["matryoshka_dims"], saved["audio_pooling"]) == (
        "clip",
        [16, 8, 4, 2],
        "global_token",
    )


# ------------------------------------------------------------------------------------------------ data


def test_caption_cells():
    assert parse_captions('["a dog", "a barking dog"]', "row 0") == ["a dog", "a barking dog"]
    assert parse_captions(["x", " ", "y"], "row 0") == ["x", "y"]
    assert parse_captions("rain on a roof", "row 0") == ["rain on a roof"]
    with pytest.raises(ValueError, match="row 3: no caption"):
        parse_captions("  ", "row 3")


def test_length_grouped_batches_cover_the_set_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.uniform(1, 8, size=2000)
    grouped = LengthGroupedBatchSampler(lengths, 16, seed=3, group_by_length=True)
    plain = LengthGroupedBatchSampler(lengths, 16, seed=3, group_by_length=False)
    for sampler in (grouped, plain):
        batches = list(sampler)
        assert len(batches) == len(sampler) == 125 and all(len(b) == 16 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(2000))
    padded = lambda s: np.mean([lengths[b].max() for b in s])  # noqa: E731
    assert padded(grouped) < 0.8 * padded(plain)
    first = list(grouped)
    grouped.set_epoch(1)
    assert list(grouped) != first


def test_bad_rows_are_skipped_and_counted(tmp_path):
    good = tmp_path / "good.wav"
    soundfile.write(good, np.sin(np.arange(16000) / 5).astype(np.float32) * 0.3, 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....WAVEjunk")
    (tmp_path / "table.csv").write_text(
        "audio,caption\ngood.wav,a tone\ncorrupt.wav,broken\nmissing.wav,gone\ngood.wav,again\n"
    )
    dataset = AudioCaptionDataset(load_caption_table(str(tmp_path / "table.csv")), max_seconds=0.5)
    item = dataset[1]
    assert item["bad"] == 2 and "corrupt.wav" in item["errors"][0] and "missing.wav" in item["errors"][1]
    assert item["caption"] == "again" and len(item["waveform"]) == 8000  # cropped to 0.5 s


def test_bad_evaluation_file_stops_the_run_before_training(tmp_path, synthetic, monkeypatch):
    (tmp_path / "eval.csv").write_text(
        f"audio,caption\n{Path(synthetic['eval']).parent / 'audio' / 'eval_00000_tone.wav'},a tone\nmissing.wav,gone\n"
    )
    config = write_config(tmp_path / "c.yaml", synthetic, max_steps=2, eval_file=str(tmp_path / "eval.csv"))
    monkeypatch.setattr(
        train, "build_model_and_processor", lambda *a: pytest.fail("the run started before checking eval files")
    )
    with pytest.raises(ValueError, match=r"1 evaluation clip\(s\) cannot be read: clip 1 \(.*missing.wav\)"):
        train.train([config, "--output_dir", str(tmp_path / "out")])


def test_missing_column_is_named(tmp_path):
    (tmp_path / "t.csv").write_text("file,text\na.wav,x\n")
    with pytest.raises(
        ValueError, match="audio_column='audio' is not a column; available columns: \\['file', 'text'\\]"
    ):
        load_caption_table(str(tmp_path / "t.csv"))


def test_too_many_bad_samples_stop_the_run(tmp_path):
    (tmp_path / "audio").mkdir()
    rows = ["audio,caption"]
    for i in range(40):
        name = f"audio/{i}.wav"
        if i % 3 == 0:
            (tmp_path / name).write_bytes(b"not audio")
        else:
            soundfile.write(
                tmp_path / name, np.random.default_rng(i).standard_normal(8000).astype(np.float32) * 0.1, 16000
            )
        rows.append(f"{name},clip {i}")
    (tmp_path / "t.csv").write_text("\n".join(rows))
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({**TINY, "train_files": [str(tmp_path / "t.csv")], "max_steps": 20, "save_steps": None})
    )
    with pytest.raises(RuntimeError, match="max_bad_sample_fraction"):
        train.train([str(config), "--output_dir", str(tmp_path / "out")])
    train.train(
        [str(config), "--output_dir", str(tmp_path / "out2"), "--max_bad_sample_fraction", "0.6", "--max_steps", "3"]
    )
    assert read_log(tmp_path / "out2")[-1]["bad_samples"] > 0


# ------------------------------------------------------------------------------------------------ runs


def test_tiny_end_to_end_run(tmp_path, synthetic, capsys):
    from transformers import AutoModel, AutoProcessor

    config = write_config(tmp_path / "c.yaml", synthetic, max_steps=6, eval_steps=3, save_steps=3, group_by_length=True)
    model, processor, final = train.train([config, "--output_dir", str(tmp_path / "run"), "--report_to", "tensorboard"])
    out = capsys.readouterr().out
    assert list((tmp_path / "run").rglob("events.out.tfevents*")), "no TensorBoard log"
    assert "Held-out retrieval" in out and "chance is R@1 5.0" in out and str(final.resolve()) in out
    recorded = json.loads((final / "wavlink_eval_results.json").read_text())
    assert recorded[0]["dataset"] == "held-out" and set(recorded[0]["results"]) == {"16", "8", "4", "2"}
    log = read_log(tmp_path / "run")
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in steps)
    assert any("eval/t2a_R@1@16" in r and "eval/a2t_R@10@2" in r for r in log)
    assert steps[0]["lr"] > steps[-1]["lr"]  # cosine decay after warmup
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    reloaded = AutoModel.from_pretrained(final, trust_remote_code=True).eval()
    reloaded_processor = AutoProcessor.from_pretrained(final, trust_remote_code=True)
    batch = reloaded_processor(
        audio=[str(Path(synthetic["train"]).parent / "audio" / "train_00000_tone.wav")], text=["a tone"]
    )
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).audio_embeds, model.eval()(**batch).audio_embeds)


def test_projector_only_leaves_towers_bit_identical(tmp_path, synthetic):
    config = write_config(tmp_path / "c.yaml", synthetic, max_steps=3, finetune="projector", save_steps=None)
    torch.manual_seed(0)
    model, _, final = train.train([config, "--output_dir", str(tmp_path / "run")])
    initial_state_dict = initial_state(config, synthetic)
    trained = weights(final)
    for name, value in trained.items():
        if name.startswith(("audio_model.", "text_model.")):
            assert torch.equal(value, initial_state_dict[name]), name
    assert not torch.equal(trained["audio_projection.weight"], initial_state_dict["audio_projection.weight"])


def test_lora_adapter_save_and_reload_gives_identical_embeddings(tmp_path, synthetic):
    from peft import PeftModel
    from transformers import AutoModel

    base_config = write_config(tmp_path / "base.yaml", synthetic, max_steps=1, save_steps=None)
    train.train([base_config, "--output_dir", str(tmp_path / "base")])
    lora_config = write_config(
        tmp_path / "lora.yaml",
        synthetic,
        max_steps=3,
        save_steps=None,
        finetune="lora",
        lora_rank=4,
        model_name_or_path=str(tmp_path / "base" / "final"),
        merge_lora=True,
    )
    for key in ("audio_config", "text_config"):
        cfg = yaml.safe_load(Path(lora_config).read_text())
        cfg.pop(key)
        Path(lora_config).write_text(yaml.safe_dump(cfg))
    model, processor, final = train.train([lora_config, "--output_dir", str(tmp_path / "lora")])
    assert (final / "adapter_model.safetensors").exists() and (final / "adapter_config.json").exists()
    saved = load_file(str(final / "adapter_model.safetensors"))
    assert (
        any("lora_A" in k for k in saved)
        and any("audio_global_token" in k for k in saved)
        and any("logit_head" in k for k in saved)
    )
    base = AutoModel.from_pretrained(tmp_path / "base" / "final", trust_remote_code=True)
    reloaded = PeftModel.from_pretrained(base, final).eval()
    batch = processor(
        audio=[str(Path(synthetic["eval"]).parent / "audio" / f"eval_0000{i}_tone.wav") for i in (0, 5)],
        text=["a tone", "noise"],
    )
    with torch.no_grad():
        expected = model.eval()(**batch)
        got = reloaded(**batch)
        merged = AutoModel.from_pretrained(final / "merged", trust_remote_code=True).eval()(**batch)
    torch.testing.assert_close(got.audio_embeds, expected.audio_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.text_embeds, expected.text_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged.audio_embeds, expected.audio_embeds, rtol=0, atol=1e-5)
    # the heads really trained (they are not frozen beside the adapters)
    base_weights = weights(tmp_path / "base" / "final")
    trained_heads = reloaded.base_model.model
    assert not torch.equal(
        trained_heads.logit_head.modules_to_save["default"].logit_scale.detach(), base_weights["logit_head.logit_scale"]
    )
    assert not torch.equal(
        trained_heads.audio_global_token.modules_to_save["default"].embedding.detach(),
        base_weights["audio_global_token.embedding"],
    )


def test_atomic_checkpoint_survives_a_crash_mid_save(tmp_path, synthetic, monkeypatch):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    model = accelerator.prepare(model)
    state = TrainerState()
    state.step = 1
    save_checkpoint(accelerator, tmp_path, state, keep=2)

    def crash(folder, **kwargs):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(accelerator, "save_state", crash)
    state.step = 2
    with pytest.raises(OSError):
        save_checkpoint(accelerator, tmp_path, state, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert resolve_resume("latest", tmp_path).name == "checkpoint-1"
    assert not (tmp_path / "checkpoint-2").exists()


def test_kill_and_resume_continues_exactly(tmp_path, synthetic):
    config = write_config(
        tmp_path / "c.yaml",
        synthetic,
        max_steps=24,
        save_steps=2,
        save_total_limit=2,
        eval_file=None,
        warmup_ratio=0.2,
        group_by_length=True,
    )
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    train.train([config, "--output_dir", str(reference_dir), "--save_total_limit", "20"])
    # A checkpoint from a stranger may hold a crafted pickle where accelerate keeps custom objects: it is never loaded.
    marker = tmp_path / "pickle-ran"
    import pickle

    class Crafted:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    (reference_dir / "checkpoint-12" / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Crafted()))
    with pytest.raises(ValueError, match="custom_checkpoint_0.pkl, a pickle that loading would execute"):
        train.train([config, "--output_dir", str(tmp_path / "mid"), "--resume_from_checkpoint",
                     str(reference_dir / "checkpoint-12")])  # fmt: skip
    assert not marker.exists(), "resuming ran code from a pickle in the checkpoint"
    (reference_dir / "checkpoint-12" / "custom_checkpoint_0.pkl").unlink()
    # Resuming mid-epoch (8 steps per epoch; step 12 is half-way through the second) continues exactly.
    _, _, mid_epoch = train.train(
        [
            config,
            "--output_dir",
            str(tmp_path / "mid"),
            "--resume_from_checkpoint",
            str(reference_dir / "checkpoint-12"),
        ]
    )
    for name, value in weights(reference_dir / "final").items():
        torch.testing.assert_close(weights(mid_epoch)[name], value, rtol=0, atol=1e-6)

    command = [sys.executable, str(ROOT / "train.py"), config, "--output_dir", str(killed_dir)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (killed_dir / "checkpoint-4" / "trainer_state.json").exists():
            assert process.poll() is None and time.time() < deadline, "run ended before it could be killed"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert not (killed_dir / "final").exists(), "the run finished before the kill; the test proves nothing"
    resumed_from = list_checkpoints(killed_dir)[-1]
    _, _, final = train.train([config, "--output_dir", str(killed_dir), "--resume_from_checkpoint", "latest"])

    reference_log = {r["step"]: r for r in read_log(reference_dir) if "loss" in r}
    resumed_steps = [r["step"] for r in read_log(killed_dir) if "loss" in r]
    assert resumed_steps == list(range(1, 25)), "after a resume the log holds each step once"
    resumed_log = {r["step"]: r for r in read_log(killed_dir) if "loss" in r}
    first_resumed = int(resumed_from.name.split("-")[1]) + 1
    for step in range(first_resumed, 25):
        assert resumed_log[step]["lr"] == pytest.approx(reference_log[step]["lr"], rel=1e-12)
        assert resumed_log[step]["loss"] == pytest.approx(reference_log[step]["loss"], rel=1e-5)
    expected, got = weights(reference_dir / "final"), weights(final)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)


def logged_steps(output_dir) -> list[dict]:
    return [r for r in read_log(output_dir) if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_two_processes_match_one_process_on_the_global_batch(tmp_path, synthetic, loss_type):
    """The default schedule (warm-up, then cosine) over several steps: same LR at every step, same logged (global)
    loss and sample count, same parameters after the run as one process holding the global batch."""
    config = write_config(
        tmp_path / "c.yaml",
        synthetic,
        max_steps=6,
        save_steps=None,
        eval_file=None,
        loss_type=loss_type,
        warmup_ratio=0.34,
    )
    single = tmp_path / "single"
    train.train([config, "--output_dir", str(single), "--per_device_train_batch_size", "8"])
    result = run_two_cpu_processes(
        [str(ROOT / "train.py"), config, "--output_dir", str(tmp_path / "double"), "--per_device_train_batch_size", "4"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    double_log, single_log = logged_steps(tmp_path / "double"), logged_steps(single)
    assert [r["step"] for r in double_log] == [r["step"] for r in single_log] == [1, 2, 3, 4, 5, 6]
    assert double_log[0]["num_processes"] == 2 and single_log[0]["num_processes"] == 1
    lrs = [r["lr"] for r in single_log]
    assert lrs[0] < lrs[1] and lrs[1] > lrs[2] > lrs[-1], f"not warm-up then decay: {lrs}"
    for one, two in zip(single_log, double_log):
        assert two["lr"] == pytest.approx(one["lr"], rel=1e-12), one["step"]
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-5), one["step"]
        assert two["samples_seen"] == one["samples_seen"] == 8 * one["step"]
    expected, got = weights(single / "final"), weights(tmp_path / "double" / "final")
    initial = initial_state(config, synthetic)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=5e-6)
    for name in ("audio_global_token.embedding", "audio_projection.weight", "audio_model.layers.0.fc1.weight"):
        assert (expected[name] - initial[name]).abs().max() > 1e-4, (
            f"{name} did not train; the comparison proves nothing"
        )


@pytest.mark.slow
def test_two_process_schedule_with_accumulation_and_resume_follows_one_process(tmp_path, synthetic):
    """Linear schedule with gradient accumulation: the LR at every optimizer step of a 2-process run, and of a
    2-process run resumed from its checkpoint, equals the 1-process LR."""
    config = write_config(
        tmp_path / "c.yaml",
        synthetic,
        max_steps=8,
        save_steps=4,
        eval_file=None,
        warmup_ratio=0.25,
        lr_scheduler_type="linear",
        gradient_accumulation_steps=2,
        save_total_limit=5,
    )
    single = tmp_path / "single"
    train.train([config, "--output_dir", str(single), "--per_device_train_batch_size", "8"])
    expected = {r["step"]: r["lr"] for r in logged_steps(single)}
    assert list(expected) == list(range(1, 9)) and expected[2] == pytest.approx(1e-3) and expected[8] == 0.0
    double = tmp_path / "double"
    result = run_two_cpu_processes(
        [str(ROOT / "train.py"), config, "--output_dir", str(double), "--per_device_train_batch_size", "4"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {r["step"]: r["lr"] for r in logged_steps(double)} == pytest.approx(expected, rel=1e-12)
    resumed = tmp_path / "resumed"
    result = run_two_cpu_processes(
        [
            str(ROOT / "train.py"),
            config,
            "--output_dir",
            str(resumed),
            "--per_device_train_batch_size",
            "4",
            "--resume_from_checkpoint",
            str(double / "checkpoint-4"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {r["step"]: r["lr"] for r in logged_steps(resumed)} == pytest.approx(
        {s: expected[s] for s in range(5, 9)}, rel=1e-12
    )


@pytest.mark.fixtures
def test_short_run_on_real_fixture_towers(tmp_path, synthetic, fixtures):
    config = write_config(
        tmp_path / "c.yaml",
        synthetic,
        max_steps=2,
        save_steps=None,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=10,
        audio_tower=str(fixtures / "whisper-tiny.en"),
        text_tower=str(fixtures / "all-MiniLM-L6-v2"),
        projection_dim=128,
    )
    cfg = yaml.safe_load(Path(config).read_text())
    cfg.pop("audio_config"), cfg.pop("text_config")
    Path(config).write_text(yaml.safe_dump(cfg))
    model, _, final = train.train([config, "--output_dir", str(tmp_path / "run")])
    assert model.config.audio_config.d_model == 384 and model.config.text_config.model_type == "bert"
    assert len([r for r in read_log(tmp_path / "run") if "loss" in r]) == 2
    assert (final / "model.safetensors").exists()


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("wavlink-*.yaml")))
def test_paper_recipes_parse_and_need_only_their_data(recipe):
    with pytest.raises(ValueError, match="--train_files: 'data/"):
        train.parse_args([str(ROOT / "configs" / recipe)])
    values = yaml.safe_load((ROOT / "configs" / recipe).read_text())
    assert (
        values["learning_rate"] == 1e-4 and values["warmup_ratio"] == 0.05 and values["lr_scheduler_type"] == "cosine"
    )
    assert values["mixed_precision"] == "bf16" and values["num_train_epochs"] == 3
    # the paper's token recipe: its N(0, 0.02) start and one learning rate for everything
    assert values["recipe"] == "paper" and not {"global_token_init", "new_parameters_lr_multiplier"} & set(values)
    assert train.TOKEN_RECIPES["paper"] == {"global_token_init": "normal", "new_parameters_lr_multiplier": 1.0}


def test_streaming_and_mixed_training_sets(tmp_path, synthetic):
    import pandas as pd

    second = tmp_path / "second.csv"
    table = pd.read_csv(synthetic["train"]).head(16)
    table["audio"] = [str(Path(synthetic["train"]).parent / a) for a in table["audio"]]
    table.to_csv(second, index=False)
    config = write_config(
        tmp_path / "c.yaml",
        synthetic,
        max_steps=3,
        save_steps=None,
        eval_file=None,
        train_files=[str(synthetic["train"]), str(second)],
    )
    train.train([config, "--output_dir", str(tmp_path / "mixed"), "--train_mix_probabilities", "0.5", "0.5"])
    train.train([config, "--output_dir", str(tmp_path / "stream"), "--streaming", "true", "--shuffle_buffer", "16"])
    for run in ("mixed", "stream"):
        steps = [r for r in read_log(tmp_path / run) if "loss" in r]
        assert [r["step"] for r in steps] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in steps)
    no_max_steps = write_config(tmp_path / "d.yaml", synthetic, save_steps=None)
    with pytest.raises(ValueError, match="--streaming needs --max_steps or --max_train_minutes"):
        train.train([no_max_steps, "--output_dir", str(tmp_path / "x"), "--streaming", "true"])


def test_final_model_is_written_beside_then_renamed(tmp_path, synthetic, monkeypatch):
    config = write_config(tmp_path / "c.yaml", synthetic, max_steps=1, save_steps=None, eval_file=None)
    _, _, final = train.train([config, "--output_dir", str(tmp_path / "run")])
    before = weights(final)

    def crash(final_dir, *args):
        Path(final_dir).mkdir()
        (Path(final_dir) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(train, "write_final", crash)
    with pytest.raises(OSError, match="disk full"):
        train.train([config, "--output_dir", str(tmp_path / "run"), "--max_steps", "2"])
    for name, value in weights(final).items():  # the previous final model is whole and untouched
        assert torch.equal(value, before[name]), name


def test_resume_checks_what_it_resumes(tmp_path, synthetic, caplog):
    import logging

    config = write_config(tmp_path / "c.yaml", synthetic, max_steps=4, save_steps=2, eval_file=None)
    run = tmp_path / "run"
    train.train([config, "--output_dir", str(run)])
    checkpoint = str(run / "checkpoint-2")
    assert json.loads((run / "checkpoint-2" / "run_arguments.json").read_text())["learning_rate"] == 1e-3
    for flag, value in (("--learning_rate", "5e-4"), ("--projection_dim", "8"), ("--loss_type", "siglip"),
                        ("--per_device_train_batch_size", "4")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{flag}: .* in the checkpoint, .* now.*cannot change in a resumed run"):
            train.train(
                [config, "--output_dir", str(tmp_path / "x"), "--resume_from_checkpoint", checkpoint, flag, value]
            )
    # changes that can apply do, and are logged: a longer run, another logging interval
    with caplog.at_level(logging.INFO, logger="wavlink.train"):
        train.train([config, "--output_dir", str(tmp_path / "longer"), "--resume_from_checkpoint", checkpoint,
                     "--max_steps", "6", "--logging_steps", "2"])  # fmt: skip
    assert "--max_steps: 4 -> 6" in caplog.text and "--logging_steps: 1 -> 2" in caplog.text
    assert [r["step"] for r in read_log(tmp_path / "longer") if "loss" in r] == [4, 6]
    # a checkpoint saved before the newer options existed (WavLink 0.2: the paper's recipe) resumes with their old
    # behaviour, and names the options to give when the defaults have moved on
    from wavlink.training.checkpoints import ADDED_OPTIONS

    legacy = tmp_path / "legacy"
    train.train([config, "--output_dir", str(legacy), "--recipe", "paper"])
    saved_file = legacy / "checkpoint-2" / "run_arguments.json"
    saved = json.loads(saved_file.read_text())
    saved_file.write_text(json.dumps({k: v for k, v in saved.items() if k not in ADDED_OPTIONS}))
    old = str(legacy / "checkpoint-2")
    with pytest.raises(ValueError, match="--recipe: 'paper' in the checkpoint, 'wavlink' now.*add --recipe paper"):
        train.train([config, "--output_dir", str(tmp_path / "y"), "--resume_from_checkpoint", old])
    train.train([config, "--output_dir", str(tmp_path / "old"), "--resume_from_checkpoint", old, "--recipe", "paper"])
    with pytest.raises(ValueError, match="--freeze_towers_ratio: 0.0 in the checkpoint, 0.5 now"):
        train.train([config, "--output_dir", str(tmp_path / "z"), "--resume_from_checkpoint", old,
                     "--recipe", "paper", "--freeze_towers_ratio", "0.5"])  # fmt: skip


# ------------------------------------------------------------------------------------------------ time budget


def test_time_schedule_shapes():
    from wavlink.training.budget import time_multiplier

    assert time_multiplier("linear", 0.2, 0.1) == pytest.approx(0.5)  # half-way through the warm-up
    assert time_multiplier("linear", 0.2, 0.6) == pytest.approx(0.5) and time_multiplier("linear", 0.2, 1.0) == 0
    assert time_multiplier("cosine", 0.0, 0.5) == pytest.approx(0.5) and time_multiplier("cosine", 0.0, 1.0) == 0
    assert time_multiplier("constant_with_warmup", 0.5, 0.9) == 1.0 and time_multiplier("constant", 0.5, 0.0) == 1.0


def test_a_time_budget_stops_on_time_with_the_schedule_completed(tmp_path, synthetic):
    budget_seconds = 4.0
    config = write_config(tmp_path / "c.yaml", synthetic, eval_file=None, save_steps=None, logging_steps=1,
                          warmup_ratio=0.25, lr_scheduler_type="linear", num_train_epochs=1000)  # fmt: skip
    out = tmp_path / "run"
    train.train([config, "--output_dir", str(out), "--max_train_minutes", str(budget_seconds / 60)])
    log = [r for r in read_log(out) if "loss" in r]
    spent = [r["train_seconds"] for r in log]
    assert spent == sorted(spent) and len(log) > 3
    # it stopped at the first step that crossed the budget: not before, not a step later
    assert spent[-1] >= budget_seconds > spent[-2]
    # the schedule followed time: warm-up while under 25% of the budget, then linear decay, ending at zero
    peak = float(yaml.safe_load(Path(config).read_text()).get("learning_rate", 1e-4))
    from wavlink.training.budget import time_multiplier

    for previous, record in zip(log, log[1:]):  # a step's lr is set from the time spent when the step before ended
        fraction = min(1.0, previous["train_seconds"] / budget_seconds)
        assert record["lr"] == pytest.approx(peak * time_multiplier("linear", 0.25, fraction), abs=peak * 1e-3)
    assert max(r["lr"] for r in log) > 0.5 * peak  # it got through the warm-up, and decayed from there
    assert (out / "final" / "model.safetensors").exists()


def test_a_time_budget_refuses_a_schedule_it_cannot_follow(tmp_path, synthetic):
    config = write_config(tmp_path / "c.yaml", synthetic, lr_scheduler_type="polynomial")
    with pytest.raises(ValueError, match="lr_scheduler_type.*with --max_train_minutes"):
        train.train([config, "--output_dir", str(tmp_path / "run"), "--max_train_minutes", "1"])


def test_new_parameters_learning_rate_reaches_the_optimizer(tmp_path, synthetic):
    from wavlink.training.regimes import is_new_parameter

    config = write_config(tmp_path / "c.yaml", synthetic, warmup_ratio=0.0, lr_scheduler_type="linear")
    model_args, _, args = train.parse_args([config, "--new_parameters_lr_multiplier", "10", "--learning_rate", "2e-4"])
    captions = train.sample_captions(load_caption_table(str(synthetic["train"])))
    model = train.build_model_and_processor(model_args, captions)[0]
    optimizer, scheduler = train.make_optimizer_and_schedule(model, args, max_steps=10)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        new = {is_new_parameter(names[id(p)]) for p in group["params"]}
        assert len(new) == 1 and group["lr"] == pytest.approx(2e-3 if new.pop() else 2e-4)
    covered = {names[id(p)] for g in optimizer.param_groups for p in g["params"]}
    assert {"audio_global_token.embedding", "audio_projection.weight", "logit_head.logit_scale"} <= covered
    optimizer.step()
    scheduler.step()  # the schedule scales every group alike: the ratio holds
    rates = {is_new_parameter(names[id(g["params"][0])]): g["lr"] for g in optimizer.param_groups}
    assert rates[True] == pytest.approx(10 * rates[False]) and rates[False] == pytest.approx(2e-4 * 0.9)
    # the recipe's rate unless given: 10x by default; the paper's single rate, in WavLink 0.1's two groups (decay,
    # no decay), with --recipe paper
    assert train.parse_args([config])[2].new_parameters_lr_multiplier == 10
    model_args, _, args = train.parse_args([config, "--recipe", "paper"])
    optimizer, _ = train.make_optimizer_and_schedule(model, args, max_steps=10)
    assert [g["weight_decay"] > 0 for g in optimizer.param_groups] == [True, False]


# ------------------------------------------------------------------------------------------------ the token's recipe


def test_tower_warm_start_schedule():
    from wavlink.training.budget import progress_schedule, time_multiplier

    towers, new = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW(
        [{"params": [towers], "new_parameters": False}, {"params": [new], "new_parameters": True, "lr": 1.0}], lr=0.1
    )
    scheduler = progress_schedule(optimizer, "linear", 0.1, lambda step: step / 10, frozen_towers_ratio=0.4)
    rates = []
    for _ in range(10):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    # the new parts follow the whole run's schedule; the towers are held for 40%, then warm up and decay over 60%
    assert [r[1] for r in rates] == pytest.approx([time_multiplier("linear", 0.1, k / 10) for k in range(10)])
    assert [r[0] for r in rates[:4]] == [0.0] * 4
    assert [r[0] for r in rates[4:]] == pytest.approx([0.1 * time_multiplier("linear", 0.1, k / 6) for k in range(6)])


def test_warm_start_holds_the_towers_still_then_trains_them(tmp_path, synthetic):
    config = write_config(tmp_path / "c.yaml", synthetic, max_steps=4, save_steps=None, eval_file=None,
                          lr_scheduler_type="linear", warmup_ratio=0.0)  # fmt: skip
    start = initial_state(config, synthetic)
    # held for 3 of 4 steps, and the towers' own warm-up takes the 4th: they never move
    _, _, held = train.train([config, "--output_dir", str(tmp_path / "held"), "--freeze_towers_ratio", "0.75",
                              "--warmup_ratio", "0.5"])  # fmt: skip
    trained = weights(held)
    for name, value in trained.items():
        if name.startswith(("audio_model.", "text_model.")):
            assert torch.equal(value, start[name]), name  # no update and no weight decay
    for name in ("audio_global_token.embedding", "audio_projection.weight", "text_projection.weight"):
        assert not torch.equal(trained[name], start[name]), name
    log = [r for r in read_log(tmp_path / "held") if "loss" in r]
    assert [r["lr"] for r in log] == [0.0] * 4 and all(r["lr_new_parameters"] > 0 for r in log[:-1])
    # held for half the run, then trained at the full rate (no warm-up): the towers move
    _, _, released = train.train([config, "--output_dir", str(tmp_path / "released"), "--freeze_towers_ratio", "0.5"])
    moved = weights(released)
    assert not torch.equal(moved["audio_model.layers.0.fc1.weight"], start["audio_model.layers.0.fc1.weight"])
    assert not torch.equal(moved["text_model.encoder.layer.0.output.dense.weight"],
                           start["text_model.encoder.layer.0.output.dense.weight"])  # fmt: skip


def test_frame_mean_token_is_the_mean_of_whisper_input_frames(fixtures, tmp_path):
    """Against stock Whisper: its feature extractor per clip, its conv front-end and positions, averaged by hand."""
    import torch.nn.functional as F
    from transformers import WhisperFeatureExtractor, WhisperModel

    from modeling_wavlink import WavLinkModel
    from processing_wavlink import WavLinkProcessor, load_audio
    from wavlink.training.token_init import init_global_token

    clips = sorted((fixtures / "audio").rglob("*.mp3"))[:4]
    assert len(clips) == 4
    table_path = tmp_path / "t.csv"
    table_path.write_text("audio,caption\n" + "".join(f"{c},a sound\n" for c in clips))
    table = load_caption_table(str(table_path))
    whisper, minilm = fixtures / "whisper-tiny.en", fixtures / "all-MiniLM-L6-v2"
    model = WavLinkModel.from_towers(str(whisper), str(minilm), projection_dim=32)
    processor = WavLinkProcessor.from_towers(str(whisper), str(minilm))
    init_global_token(model, processor, table, "frame_mean", num_clips=4)

    encoder = WhisperModel.from_pretrained(whisper).encoder.float().eval()
    extractor = WhisperFeatureExtractor.from_pretrained(whisper)
    frames = []
    with torch.no_grad():
        for clip in clips:
            waveform = load_audio(str(clip), None, 16000)
            features = extractor(waveform, sampling_rate=16000, padding="do_not_pad", return_tensors="pt")
            mel = features.input_features[:, :, : len(waveform) // 160]
            hidden = F.gelu(encoder.conv2(F.gelu(encoder.conv1(mel)))).transpose(1, 2)[0]
            frames.append(hidden + encoder.embed_positions.weight[: hidden.shape[0]])
    expected = torch.cat(frames).mean(dim=0)
    torch.testing.assert_close(model.audio_global_token.embedding.data, expected, atol=2e-4, rtol=1e-4)
    assert expected.norm() > 10 * 0.02 * expected.numel() ** 0.5  # far from the paper's N(0, 0.02) start


def test_temperature_init_sets_a_new_models_starting_temperature(tmp_path, synthetic):
    config = write_config(tmp_path / "c.yaml", synthetic)
    model_args, _, _ = train.parse_args([config, "--temperature_init", "0.05"])
    captions = train.sample_captions(load_caption_table(str(synthetic["train"])))
    model = train.build_model_and_processor(model_args, captions)[0]
    assert float(model.logit_head.logit_scale.exp()) == pytest.approx(20.0)


def test_recipe_decides_a_new_tokens_start_and_never_touches_a_trained_one(tmp_path, synthetic, saved_checkpoint):
    def resolved(*flags, checkpoint=None):
        argv = [write_config(tmp_path / "c.yaml", synthetic), *flags]
        if checkpoint is not None:
            argv = [checkpoint_run_config(tmp_path / "k.yaml", synthetic, checkpoint), *flags]
        return train.resolve_global_token_init(train.parse_args(argv)[0])

    assert resolved() == "frame_mean" and resolved("--recipe", "paper") == "normal"
    assert resolved("--recipe", "paper", "--global_token_init", "frame_mean") == "frame_mean"
    assert resolved("--audio_pooling", "mean") == "normal"  # no token to initialise
    assert resolved(checkpoint=saved_checkpoint) == "normal"  # its token is trained: kept
    mean_checkpoint = tmp_path / "mean-checkpoint"
    from conftest import tiny_model

    tiny_model(seed=2, audio_pooling="mean").save_pretrained(mean_checkpoint)
    # a checkpoint trained with mean pooling gets a new token, started as the recipe says
    assert resolved("--audio_pooling", "global_token", checkpoint=mean_checkpoint) == "frame_mean"
