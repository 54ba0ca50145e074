import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CAPTIONS, noise, tiny_config, tiny_model, tiny_processor
from transformers import (
    BertModel,
    CLIPConfig,
    CLIPModel,
    ModernBertConfig,
    ModernBertModel,
    WhisperConfig,
    WhisperForConditionalGeneration,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from configuration_wavlink import WavLinkConfig
from modeling_wavlink import WavLinkModel, clip_loss, matryoshka_contrastive_loss, siglip_loss

# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("loss_type", "triplet", "loss_type"),
        ("audio_pooling", "max", "audio_pooling"),
        ("text_pooling", "first", "text_pooling"),
        ("matryoshka_dims", [16, 32], "matryoshka_dims"),
        ("matryoshka_dims", [8, 4], "matryoshka_dims"),
        ("projection_dim", 0, "projection_dim"),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        tiny_config(**{field: value})


def test_config_defaults_follow_the_paper():
    config = WavLinkConfig()
    assert config.matryoshka_dims == [512, 256, 128, 64]
    assert config.text_pooling == "eos"  # CLIP text tower by default
    assert config.logit_scale_init_value == pytest.approx(math.log(1 / 0.07))
    assert config.logit_scale_max == pytest.approx(math.log(100))
    siglip = WavLinkConfig(loss_type="siglip")
    assert siglip.logit_scale_init_value == pytest.approx(math.log(10)) and siglip.logit_bias_init_value == -10
    assert tiny_config().text_pooling == "mean"
    assert WavLinkConfig(text_config={"model_type": "modernbert"}).text_pooling == "cls"


def test_config_round_trip(tmp_path):
    config = tiny_config(loss_type="siglip", matryoshka_dims=[16, 4])
    config.save_pretrained(tmp_path)
    loaded = WavLinkConfig.from_pretrained(tmp_path)
    assert loaded.text_config.model_type == "bert" and loaded.audio_config.d_model == 32
    assert loaded.matryoshka_dims == [16, 4] and loaded.loss_type == "siglip"


# ------------------------------------------------------------------------------------------------ audio tower


def test_audio_tower_without_token_equals_stock_whisper_encoder_on_30s_input():
    model = tiny_model(audio_pooling="mean")
    stock = WhisperEncoder(model.config.audio_config).eval()
    stock.load_state_dict(model.audio_model.state_dict())
    features = torch.randn(2, 80, 3000)
    with torch.no_grad():
        ours = model.encode_audio(features).last_hidden_state
        reference = stock(features).last_hidden_state
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_global_token_is_appended_last_and_pooled():
    model = tiny_model()
    features = torch.randn(1, 80, 200)
    with torch.no_grad():
        out = model.encode_audio(features)
    assert out.last_hidden_state.shape == (1, 101, 32)  # 100 frames + the token
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, -1])


@pytest.mark.parametrize("pooling", ["global_token", "mean"])
def test_batched_variable_length_equals_each_clip_alone(pooling):
    model, processor = tiny_model(audio_pooling=pooling), tiny_processor()
    # odd and even mel-frame counts, so conv2's stride-2 boundary is exercised
    clips = [noise(1.01, seed=1), noise(2.5, seed=2), noise(0.33, seed=3), noise(4.0, seed=4)]
    with torch.no_grad():
        batch = processor(audio=clips, sampling_rate=16000)
        assert len({int(n) for n in batch["input_features_mask"].sum(1)}) == 4
        batched = model.get_audio_features(**batch).pooler_output
        alone = torch.cat(
            [model.get_audio_features(**processor(audio=c, sampling_rate=16000)).pooler_output for c in clips]
        )
    assert (batched - alone).abs().max() < 1e-5


def test_padding_changes_nothing_only_because_of_the_mask():
    """Guard against a test that cannot fail: dropping the mask must change the padded clips' embeddings."""
    model, processor = tiny_model(), tiny_processor()
    batch = processor(audio=[noise(1.01, seed=1), noise(3.0, seed=2)], sampling_rate=16000)
    with torch.no_grad():
        masked = model.get_audio_features(**batch).pooler_output
        unmasked = model.get_audio_features(input_features=batch["input_features"]).pooler_output
    assert (masked[0] - unmasked[0]).abs().max() > 1e-3
    torch.testing.assert_close(masked[1], unmasked[1], rtol=0, atol=1e-6)


def test_long_audio_windows_are_averaged_before_normalisation():
    model, processor = tiny_model(), tiny_processor()
    clip = noise(65.0, seed=5)
    batch = processor(audio=[clip, noise(2.0, seed=6)], sampling_rate=16000)
    assert batch["audio_window_counts"].tolist() == [3, 1]
    with torch.no_grad():
        embeds = model.get_audio_features(**batch).pooler_output
        windows = [clip[:480000], clip[480000:960000], clip[960000:]]
        projected = torch.cat(
            [
                model.audio_projection(
                    model.encode_audio(
                        **{k: v for k, v in processor(audio=w, sampling_rate=16000).items()}
                    ).pooler_output
                )
                for w in windows
            ]
        )
    assert embeds.shape == (2, 16)
    torch.testing.assert_close(embeds[0], F.normalize(projected.mean(0), dim=-1), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ embeddings, logits


def test_forward_outputs_and_matryoshka_dims():
    model, processor = tiny_model(), tiny_processor()
    batch = processor(audio=[noise(1.0), noise(2.0, seed=1)], sampling_rate=16000, text=TINY_CAPTIONS[:3])
    with torch.no_grad():
        out = model(**batch)
        full = out.audio_embeds
        small = model.get_audio_features(**{k: batch[k] for k in ("input_features", "input_features_mask")}, dim=4)
    assert out.logits_per_audio.shape == (2, 3) and out.logits_per_text.shape == (3, 2)
    torch.testing.assert_close(out.logits_per_audio, out.logit_scale * full @ out.text_embeds.t())
    torch.testing.assert_close(full.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(small.pooler_output, F.normalize(full[:, :4], dim=-1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="dim=5"):
        model.get_audio_features(**{k: batch[k] for k in ("input_features", "input_features_mask")}, dim=5)


def test_logit_scale_is_clamped():
    model = tiny_model()
    with torch.no_grad():
        model.logit_head.logit_scale.fill_(10.0)
    scale, bias = model.logit_head()
    assert scale.item() == pytest.approx(100.0) and bias is None


# ------------------------------------------------------------------------------------------------ losses


def _reference_clip(a, t, scale):
    logits = scale * a @ t.T
    n = len(a)
    loss_a = -np.mean([logits[i, i] - np.log(np.exp(logits[i]).sum()) for i in range(n)])
    loss_t = -np.mean([logits[i, i] - np.log(np.exp(logits[:, i]).sum()) for i in range(n)])
    return (loss_a + loss_t) / 2


def _reference_siglip(a, t, scale, bias):
    logits = scale * a @ t.T + bias
    labels = 2 * np.eye(len(a)) - 1
    return -np.sum(np.log(1 / (1 + np.exp(-labels * logits)))) / len(a)


def test_losses_match_hand_computation():
    g = torch.Generator().manual_seed(0)
    a, t = F.normalize(torch.randn(5, 8, generator=g), dim=-1), F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(7.0)
    assert clip_loss(a, t, scale).item() == pytest.approx(_reference_clip(a.numpy(), t.numpy(), 7.0), rel=1e-5)
    assert siglip_loss(a, t, scale, torch.tensor(-3.0)).item() == pytest.approx(
        _reference_siglip(a.numpy(), t.numpy(), 7.0, -3.0), rel=1e-5
    )


def test_matryoshka_loss_averages_renormalised_prefixes():
    g = torch.Generator().manual_seed(1)
    a, t = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    scale = torch.tensor(5.0)
    expected = np.mean(
        [
            _reference_clip(F.normalize(a[:, :d], dim=-1).numpy(), F.normalize(t[:, :d], dim=-1).numpy(), 5.0)
            for d in (16, 8, 4)
        ]
    )
    got = matryoshka_contrastive_loss(a, t, scale, loss_type="clip", matryoshka_dims=[16, 8, 4])
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_sharded_loss_averages_to_the_global_loss(loss_type):
    """Each process scores its rows against the gathered batch; the mean over processes is the global loss."""
    g = torch.Generator().manual_seed(2)
    a, t = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    scale, bias = torch.tensor(10.0), torch.tensor(-2.0)
    full = matryoshka_contrastive_loss(
        a, t, logit_scale=scale, logit_bias=bias, loss_type=loss_type, matryoshka_dims=[16, 8]
    )
    shards = [
        matryoshka_contrastive_loss(
            a[i : i + 4],
            t[i : i + 4],
            logit_scale=scale,
            logit_bias=bias,
            loss_type=loss_type,
            matryoshka_dims=[16, 8],
            all_audio_embeds=a,
            all_text_embeds=t,
            offset=i,
        )
        for i in (0, 4)
    ]
    assert torch.stack(shards).mean().item() == pytest.approx(full.item(), rel=1e-6)


@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_return_loss_trains(loss_type):
    model, processor = tiny_model(loss_type=loss_type), tiny_processor()
    model.train()
    batch = processor(audio=[noise(1.0, seed=i) for i in range(3)], sampling_rate=16000, text=TINY_CAPTIONS[:3])
    out = model(**batch, return_loss=True)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.audio_global_token.embedding.grad.abs().sum() > 0
    assert model.logit_head.logit_scale.grad is not None
    assert (model.logit_head.logit_bias is not None) == (loss_type == "siglip")


def test_gradient_checkpointing_and_attention_implementations_agree():
    processor = tiny_processor()
    batch = processor(audio=[noise(1.0), noise(1.7, seed=1)], sampling_rate=16000, text=TINY_CAPTIONS[:2])
    results = {}
    for name, kwargs, checkpointing in [
        ("sdpa", {}, False),
        ("eager", {"attn_implementation": "eager"}, False),
        ("ckpt", {}, True),
    ]:
        torch.manual_seed(0)
        model = WavLinkModel(tiny_config(**kwargs)).train()
        if kwargs:
            assert model.audio_model.config._attn_implementation == "eager"
        if checkpointing:
            model.gradient_checkpointing_enable()
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        results[name] = (loss.detach(), model.audio_global_token.embedding.grad.clone())
    assert WavLinkModel(tiny_config()).audio_model.config._attn_implementation == "sdpa"
    for name in ("eager", "ckpt"):
        torch.testing.assert_close(results[name][0], results["sdpa"][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(results[name][1], results["sdpa"][1], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flex_attention"])
def test_attention_backends_that_cannot_take_the_padding_mask_are_refused(implementation):
    # The padded-audio mask is an additive float mask; kernels that need another mask form are not declared.
    with pytest.raises(ValueError, match="does not support"):
        WavLinkModel(tiny_config(attn_implementation=implementation))
    model = tiny_model()
    with pytest.raises(ValueError, match="does not support"):
        model.set_attn_implementation(implementation)


def test_eager_and_sdpa_give_the_same_padded_batch_embeddings():
    processor = tiny_processor()
    batch = processor(audio=[noise(0.6), noise(2.3, seed=1), noise(1.1, seed=2)], sampling_rate=16000)
    assert not bool(batch["input_features_mask"].all())
    embeds = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = WavLinkModel(tiny_config(attn_implementation=implementation)).eval()
        with torch.no_grad():
            embeds[implementation] = model.get_audio_features(**batch).pooler_output
    torch.testing.assert_close(embeds["eager"], embeds["sdpa"], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ from_towers


def _tiny_whisper(path, dtype, encoder_only=False):
    config = WhisperConfig(
        d_model=32,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=32,
        vocab_size=100,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(3)
    model = WhisperForConditionalGeneration(config).to(dtype)
    (model.model.encoder if encoder_only else model).save_pretrained(path)
    return model.model.encoder.float().eval()


@pytest.mark.parametrize("encoder_only", [False, True])
def test_from_towers_loads_float16_whisper_as_float32(tmp_path, encoder_only):
    reference = _tiny_whisper(tmp_path / "whisper", torch.float16, encoder_only)
    text = BertModel(tiny_config().text_config)
    text.save_pretrained(tmp_path / "bert")
    model = WavLinkModel.from_towers(str(tmp_path / "whisper"), str(tmp_path / "bert"), projection_dim=16).eval()
    assert model.dtype == torch.float32
    for name, param in reference.state_dict().items():
        torch.testing.assert_close(model.audio_model.state_dict()[name], param, rtol=0, atol=0)


def test_from_towers_reuses_clip_text_projection(tmp_path):
    _tiny_whisper(tmp_path / "whisper", torch.float32)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=99,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=20,
            eos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=30,
            patch_size=15,
        ),
        projection_dim=24,
    )
    torch.manual_seed(4)
    clip = CLIPModel(config).eval()
    clip.save_pretrained(tmp_path / "clip")
    model = WavLinkModel.from_towers(str(tmp_path / "whisper"), str(tmp_path / "clip")).eval()
    assert model.config.projection_dim == 24 and model.config.text_pooling == "eos"
    input_ids = torch.tensor([[0, 5, 6, 7, 2], [0, 9, 2, 1, 1]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        ours = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        reference = clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    torch.testing.assert_close(ours, F.normalize(reference, dim=-1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="projection_dim"):
        WavLinkModel.from_towers(str(tmp_path / "whisper"), str(tmp_path / "clip"), projection_dim=16)


def test_from_towers_with_modernbert_pools_cls(tmp_path):
    _tiny_whisper(tmp_path / "whisper", torch.float32)
    torch.manual_seed(5)
    bert = ModernBertModel(
        ModernBertConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            pad_token_id=0,
            global_attn_every_n_layers=1,
        )
    ).eval()
    bert.save_pretrained(tmp_path / "modernbert")
    model = WavLinkModel.from_towers(str(tmp_path / "whisper"), str(tmp_path / "modernbert"), projection_dim=16).eval()
    input_ids = torch.tensor([[1, 5, 6, 7], [1, 9, 2, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        ours = model.encode_text(input_ids, attention_mask).pooler_output
        reference = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_wrong_audio_tower_is_rejected(tmp_path):
    BertModel(tiny_config().text_config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="not Whisper"):
        WavLinkModel.from_towers(str(tmp_path / "bert"), str(tmp_path / "bert"))


# ------------------------------------------------------------------------------------------------ real fixtures


@pytest.mark.fixtures
def test_real_audio_tower_equals_stock_encoder(fixtures, real_model):
    stock = WhisperForConditionalGeneration.from_pretrained(fixtures / "whisper-tiny.en", dtype=torch.float32)
    stock = stock.model.encoder.eval()
    token, real_model.audio_global_token = real_model.audio_global_token, None
    try:
        features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(
                real_model.encode_audio(features).last_hidden_state,
                stock(features).last_hidden_state,
                rtol=0,
                atol=1e-5,
            )
    finally:
        real_model.audio_global_token = token


@pytest.mark.fixtures
def test_real_text_tower_equals_stock_bert(fixtures, real_model, real_processor):
    stock = BertModel.from_pretrained(fixtures / "all-MiniLM-L6-v2", dtype=torch.float32).eval()
    batch = real_processor(text=["a dog barks in the distance", "rain"])
    with torch.no_grad():
        ours = real_model.encode_text(**batch)
        reference = stock(**batch).last_hidden_state
    torch.testing.assert_close(ours.last_hidden_state, reference, rtol=0, atol=1e-5)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # sentence-transformers mean pooling
    torch.testing.assert_close(ours.pooler_output, (reference * mask).sum(1) / mask.sum(1), rtol=0, atol=1e-5)


@pytest.mark.fixtures
def test_real_recordings_batched_equal_alone(real_model, real_processor, animal_files):
    with torch.no_grad():
        batched = real_model.get_audio_features(**real_processor(audio=animal_files)).pooler_output
        alone = torch.cat(
            [real_model.get_audio_features(**real_processor(audio=f)).pooler_output for f in animal_files]
        )
    assert (batched - alone).abs().max() < 1e-4


def test_bf16_inference_option_is_close_to_fp32_and_off_in_training():
    model, processor = tiny_model(), tiny_processor()
    batch = processor(audio=[noise(1.0), noise(2.3, seed=1)], sampling_rate=16000, text=TINY_CAPTIONS[:2])
    with torch.no_grad():
        fp32 = model(**batch)
        model.config.inference_precision = "bf16"
        bf16 = model(**batch)
    assert bf16.audio_embeds.dtype == torch.float32
    assert not torch.equal(bf16.audio_embeds, fp32.audio_embeds)  # it really ran in bf16
    cosine = (bf16.audio_embeds * fp32.audio_embeds).sum(-1)
    assert cosine.min() > 0.99
    model.train()
    torch.testing.assert_close(model(**batch).audio_embeds, fp32.audio_embeds, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="inference_precision"):
        tiny_config(inference_precision="fp8")


def test_audio_tower_is_a_module_of_its_own():
    from modeling_wavlink import WavLinkAudioEncoder

    model, processor = tiny_model(), tiny_processor()
    batch = processor(audio=[noise(0.7), noise(1.9, seed=1)], sampling_rate=16000)
    assert isinstance(model.audio_model, WavLinkAudioEncoder)
    with torch.no_grad():
        tower = model.audio_model(
            batch["input_features"], batch["input_features_mask"], global_token=model.audio_global_token
        )
        mean = model.audio_model(batch["input_features"], batch["input_features_mask"])
        embeds = model.get_audio_features(**batch).pooler_output
    # get_audio_features is the tower, then the projection, then normalisation
    torch.testing.assert_close(embeds, F.normalize(model.audio_projection(tower.pooler_output), dim=-1), rtol=0, atol=0)
    # without a token the tower pools the real frames' mean (clip 0 has 0.7 s = 35 real frames of the 95 computed)
    assert mean.last_hidden_state.shape[1] == tower.last_hidden_state.shape[1] - 1 == 95
    torch.testing.assert_close(mean.pooler_output[0], mean.last_hidden_state[0, :35].mean(0), rtol=1e-5, atol=1e-6)


def test_whisper_options_the_forward_cannot_honour_are_rejected():
    with pytest.raises(ValueError, match="encoder_layerdrop=0.1 is not supported"):
        tiny_model(audio_config=dict(tiny_config().audio_config.to_dict(), encoder_layerdrop=0.1))


def test_non_finite_features_are_refused_at_the_models_door():
    model, processor = tiny_model(), tiny_processor()
    batch = processor(audio=[noise(0.5), noise(0.7, seed=1)], sampling_rate=16000)
    batch["input_features"][1, 3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"window\(s\) \[1\] contain NaN or Inf"):
        model.get_audio_features(**batch)


def test_long_audio_runs_in_bounded_passes_with_the_same_embedding(monkeypatch):
    import modeling_wavlink

    model, processor = tiny_model(), tiny_processor()
    batch = processor(audio=[noise(95.0), noise(1.0, seed=1)], sampling_rate=16000)  # 4 + 1 windows
    with torch.no_grad():
        whole = model.get_audio_features(**batch)
        monkeypatch.setattr(modeling_wavlink, "WINDOWS_PER_PASS", 2)
        passes = model.get_audio_features(**batch)
    assert whole.last_hidden_state is not None and passes.last_hidden_state is None
    torch.testing.assert_close(passes.pooler_output, whole.pooler_output, rtol=0, atol=1e-5)


@pytest.mark.fixtures
def test_a_long_file_fits_in_bounded_memory(fixtures, tmp_path):
    """40 minutes of real audio through real whisper-tiny.en: all 80 windows in one pass peaked at 2.77 GB; in passes
    of 16 windows the process stays well under 2 GB (RSS measured in a fresh process)."""
    import subprocess
    import sys

    from conftest import ROOT

    script = f"""
import resource, sys, numpy as np, torch
sys.path.insert(0, {str(ROOT)!r})
from modeling_wavlink import WavLinkModel
from processing_wavlink import WavLinkProcessor, load_audio
torch.set_num_threads(2)
towers = ({str(fixtures / "whisper-tiny.en")!r}, {str(fixtures / "all-MiniLM-L6-v2")!r})
model, processor = WavLinkModel.from_towers(*towers, projection_dim=256).eval(), WavLinkProcessor.from_towers(*towers)
clip = load_audio({str(fixtures / "audio" / "animals" / "owl.mp3")!r}, None)
long = np.tile(clip, int(40 * 60 * 16000 / len(clip)) + 1)[: 40 * 60 * 16000]
with torch.inference_mode():
    embedding = model.get_audio_features(**processor(audio=[long], sampling_rate=16000)).pooler_output
assert embedding.shape == (1, 256) and torch.isfinite(embedding).all()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    peak_gb = float(result.stdout.strip().splitlines()[-1])
    assert peak_gb < 2.0, f"peak RSS {peak_gb:.2f} GB for 40 minutes of audio"
