"""Writes `tests/reference/tiny-wavlink-0.1/`: a tiny WavLink folder saved by the code *before* the issue-10
restructuring (commit c3f80fa + issue 9), with the embeddings and losses that code computed on fixed inputs.
`tests/test_reference.py` loads it with today's code and requires bit-identical results. Run it only to document
how the reference was made; rerunning it with newer code would make the test prove nothing.

    python tests/reference/make_reference.py
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from conftest import TINY_CAPTIONS, noise, tiny_model, tiny_processor  # noqa: E402

REFERENCE_INPUT_SECONDS = (0.6, 1.7, 2.3, 1.1)


def reference_batch(processor):
    """Fixed model inputs. The log-mel comes from Whisper's stock extractor clip by clip, padded in the mel domain
    (what the 0.1 processor did), so the comparison is of the model alone: the processor's own batched log-mel,
    introduced later, is checked against the stock extractor in `test_embedding_loop.py` (within 1e-5)."""
    clips = [noise(seconds, seed=index) for index, seconds in enumerate(REFERENCE_INPUT_SECONDS)]
    batch = dict(processor(text=TINY_CAPTIONS[: len(clips)]))
    extractor = processor.feature_extractor
    per_clip = [
        torch.from_numpy(extractor(c, sampling_rate=16000, padding="longest", return_tensors="np")["input_features"][0])
        for c in clips
    ]
    frames = max(f.shape[-1] for f in per_clip)
    batch["input_features"] = torch.stack([torch.nn.functional.pad(f, (0, frames - f.shape[-1])) for f in per_clip])
    batch["input_features_mask"] = torch.stack([(torch.arange(frames) < f.shape[-1]).long() for f in per_clip])
    return batch


def compute(model, batch) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(**batch, return_loss=True)
        result = {
            "audio_embeds": out.audio_embeds,
            "text_embeds": out.text_embeds,
            "loss": out.loss.reshape(1),
            "logits_per_audio": out.logits_per_audio,
        }
        for dim in model.config.matryoshka_dims[1:]:
            result[f"audio_embeds@{dim}"] = model.get_audio_features(**batch, dim=dim).pooler_output
    return {k: v.contiguous() for k, v in result.items()}


def main():
    variants = {"global-token-clip": {}, "mean-siglip": {"audio_pooling": "mean", "loss_type": "siglip"}}
    for name, overrides in variants.items():
        folder = HERE / "tiny-wavlink-0.1" / name
        model, processor = tiny_model(seed=11, **overrides), tiny_processor()
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        save_file(compute(model, reference_batch(processor)), str(folder / "expected_outputs.safetensors"))
        print("wrote", folder)


if __name__ == "__main__":
    main()
