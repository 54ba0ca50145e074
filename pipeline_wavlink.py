"""The `wavlink-embedding` pipeline: L2-normalised audio or text embeddings at any Matryoshka size.

Served from the Hub beside the model (the config's `custom_pipelines` names it), so
`pipeline(model=repo, trust_remote_code=True)` returns it:

    embed = pipeline(model="me/wavlink-base", trust_remote_code=True)
    embed(audio=["a.wav", "b.mp3"], dim=128)   # float32 array (2, 128)
    embed(text=["a dog barks"])                # float32 array (1, d)

Imports only torch, numpy, transformers and sibling modules at the top level.
"""

import numpy as np
import torch
from transformers import Pipeline

try:
    from .configuration_wavlink import check_matryoshka_dim, check_positive_size
    from .processing_wavlink import AUDIO_SUFFIXES, describe_audio, load_audio
except ImportError:
    from configuration_wavlink import check_matryoshka_dim, check_positive_size
    from processing_wavlink import AUDIO_SUFFIXES, describe_audio, load_audio

# A chunk of inputs is decoded, sorted by length and embedded in batches; chunks bound the memory of decoded audio.
CHUNK = 256


class WavLinkEmbeddingPipeline(Pipeline):
    """Embeds audio (paths, arrays with `sampling_rate`, datasets-style dicts) or text with a WavLink model.

    Call with `audio=` or `text=` (a single item or a list) and optionally `dim=` (a Matryoshka size),
    `batch_size=`, `sampling_rate=`, `inference_precision="bf16"` (bfloat16 autocast; default: the config's) and
    `progress=`. Returns a float32 numpy array `(n, dim)` of L2-normalised rows, or `(dim,)` for a single non-list
    input.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False

    def __call__(
        self,
        inputs=None,
        *,
        audio=None,
        text=None,
        dim=None,
        batch_size=16,
        sampling_rate=None,
        inference_precision=None,
        progress=None,
    ):
        if inputs is not None:
            if audio is not None or text is not None:
                raise ValueError("Give the inputs positionally or as audio=/text=, not both.")
            values = inputs if isinstance(inputs, (list, tuple)) else [inputs]
            if all(isinstance(v, str) and not _looks_like_audio_path(v) for v in values):
                text = inputs
            else:
                audio = inputs
        if (audio is None) == (text is None):
            raise ValueError("Give either audio=... or text=... (not both).")
        items = audio if audio is not None else text
        single = not isinstance(items, (list, tuple))
        items = [items] if single else list(items)
        if not items:
            raise ValueError("Nothing to embed: the input list is empty.")
        check_positive_size("batch_size", batch_size)
        dim = self._check_dim(dim)
        if inference_precision not in (None, "fp32", "bf16"):
            raise ValueError(f"inference_precision={inference_precision!r} is not one of 'fp32', 'bf16'.")
        show = len(items) > batch_size * 4 if progress is None else progress
        embeds = (
            self._embed_audio(items, dim, batch_size, sampling_rate, inference_precision, show)
            if audio is not None
            else self._embed_text(items, dim, batch_size * 4, inference_precision, show)
        )
        return embeds[0] if single else embeds

    # The Pipeline API's per-item steps (used when the pipeline is driven item by item, e.g. by `pipe(dataset)`).
    def _sanitize_parameters(self, dim=None, sampling_rate=None, **kwargs):
        return {"sampling_rate": sampling_rate}, {"dim": dim}, {}

    def preprocess(self, inputs, sampling_rate=None):
        if isinstance(inputs, str) and not _looks_like_audio_path(inputs):
            return dict(self.processor(text=[inputs]))
        return dict(self.processor(audio=[inputs], sampling_rate=sampling_rate))

    def _forward(self, model_inputs, dim=None):
        features = self.model.get_text_features if "input_ids" in model_inputs else self.model.get_audio_features
        with torch.inference_mode():
            return {"embeds": features(**model_inputs, dim=dim).pooler_output}

    def postprocess(self, model_outputs):
        return model_outputs["embeds"][0].detach().float().cpu().numpy()

    # ---------------------------------------------------------------- batched embedding

    def _check_dim(self, dim):
        return check_matryoshka_dim(dim, self.model.config)

    def _autocast(self, inference_precision):
        # Imported here: modeling_wavlink imports this module (to serve it beside the model), not the other way.
        try:
            from .modeling_wavlink import inference_autocast
        except ImportError:
            from modeling_wavlink import inference_autocast
        return inference_autocast(self.device, inference_precision)

    def _run(self, batches, features_fn, inference_precision, progress, total, desc):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
        for indices, inputs in batches:
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.inference_mode(), self._autocast(inference_precision):
                embeds = features_fn(**inputs).pooler_output.float().cpu().numpy()
            bar.update(len(indices))
            yield indices, embeds
        bar.close()

    def _embed_audio(self, items, dim, batch_size, sampling_rate, inference_precision, progress):
        rate = self.processor.feature_extractor.sampling_rate
        out = np.zeros((len(items), dim), dtype=np.float32)

        def batches():
            for start in range(0, len(items), CHUNK):
                chunk = [
                    load_audio(item, sampling_rate, rate, name=describe_audio(item, f"audio[{start + i}]"))
                    for i, item in enumerate(items[start : start + CHUNK])
                ]
                order = np.argsort([-len(w) for w in chunk], kind="stable")  # little padding per batch
                for b in range(0, len(order), batch_size):
                    picked = order[b : b + batch_size]
                    # log-mel on the model's device: on a GPU the host-side STFT is otherwise the bottleneck
                    inputs = dict(
                        self.processor(audio=[chunk[i] for i in picked], sampling_rate=rate, feature_device=self.device)
                    )
                    yield start + picked, inputs

        features = lambda **kw: self.model.get_audio_features(**kw, dim=dim)  # noqa: E731
        for indices, embeds in self._run(batches(), features, inference_precision, progress, len(items), "audio"):
            out[indices] = embeds
        return out

    def _embed_text(self, items, dim, batch_size, inference_precision, progress):
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"text[{bad[0]}] must be a string, got {type(items[bad[0]]).__name__}.")
        out = np.zeros((len(items), dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in items], kind="stable")

        def batches():
            for b in range(0, len(order), batch_size):
                picked = order[b : b + batch_size]
                yield picked, dict(self.processor(text=[items[i] for i in picked]))

        features = lambda **kw: self.model.get_text_features(**kw, dim=dim)  # noqa: E731
        for indices, embeds in self._run(batches(), features, inference_precision, progress, len(items), "text"):
            out[indices] = embeds
        return out


def _looks_like_audio_path(value: str) -> bool:
    return value.lower().endswith(AUDIO_SUFFIXES)


__all__ = ["WavLinkEmbeddingPipeline"]
