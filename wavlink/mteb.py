"""WavLink in MTEB / MAEB (mteb 2.x): audio zero-shot classification, audio-text retrieval and clustering.

    import mteb
    from wavlink.mteb import WavLinkMtebEncoder

    model = WavLinkMtebEncoder("me/wavlink-base")              # or: wavlink_model_meta(...).load_model()
    tasks = mteb.get_tasks(tasks=["ESC50_Zeroshot", "UrbanSound8kZeroshot", "ESC50Clustering"])
    results = mteb.evaluate(model, tasks=tasks)

Why a WavLink encoder rather than mteb's sentence-transformers route (which also loads a WavLink folder, see the
README): mteb's route decodes audio through `datasets` with torchcodec and resamples with torchaudio (neither is a
WavLink dependency, and torchaudio has no wheel for every torch), and cuts clips at its own length cap. This encoder
reads the `datasets` audio column undecoded and embeds it with WavLink's own loop: the decoders WavLink documents
(soundfile, soxr, PyAV), 30-s windows for long audio, length-sorted batches, decoding workers and the log-mel on the
GPU. It loads the model with the installed classes, so no code from the model's folder runs. `ModelMeta` records
modalities audio and text, the Matryoshka widths, cosine similarity and where the model comes from.
"""

from pathlib import Path

import numpy as np
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder

from pipeline_wavlink import gather_embeddings, iter_audio_embeddings, iter_text_embeddings

from .hub.cards import hub_ids
from .loading import load_model_and_processor, resolve_device

ARXIV = "https://arxiv.org/abs/2601.15118"


class WavLinkMtebEncoder(AbsEncoder):
    """mteb's encoder protocol for a WavLink folder or Hub repo: `encode` embeds a batch of audio or text inputs as
    L2-normalised rows (at Matryoshka width `dim`, default full), `similarity` is cosine."""

    def __init__(
        self,
        model_name: str,
        revision: str | None = None,
        *,
        device: str | None = None,
        dim: int | None = None,
        batch_size: int = 16,
        num_workers: int | None = None,
        inference_precision: str | None = None,
        **kwargs,
    ) -> None:
        self.model, self.processor = load_model_and_processor(str(model_name), revision=revision)
        self.model.to(resolve_device(device)).eval()
        self.dim = dim or self.model.config.projection_dim
        self.batch_size, self.num_workers, self.inference_precision = batch_size, num_workers, inference_precision
        parameters = sum(p.numel() for p in self.model.parameters())
        self.mteb_model_meta = wavlink_model_meta(model_name, self.model.config, revision, parameters)

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs) -> np.ndarray:
        """`(len(inputs.dataset), dim)` embeddings of the dataset behind mteb's DataLoader: its `audio` column if it
        has one (read undecoded: WavLink decodes), else its `text` column."""
        dataset = inputs.dataset
        if "audio" in dataset.column_names:
            batches = iter_audio_embeddings(
                self.model, self.processor, _undecoded(dataset, "audio"), self.dim, self.batch_size,
                num_workers=self.num_workers, inference_precision=self.inference_precision,
            )  # fmt: skip
        elif "text" in dataset.column_names:
            batches = iter_text_embeddings(
                self.model, self.processor, list(dataset["text"]), self.dim, self.batch_size * 4,
                self.inference_precision,
            )  # fmt: skip
        else:
            raise ValueError(f"WavLink embeds audio and text; this input has columns {dataset.column_names}.")
        return gather_embeddings(None, list(batches), len(dataset), self.dim)


def _undecoded(dataset, column: str) -> list:
    """The audio column as WavLink's loader reads it: `{"path", "bytes"}` for an `Audio` feature (no torchcodec),
    the stored values otherwise (`{"array", "sampling_rate"}` dicts, paths)."""
    import datasets

    if isinstance(dataset.features.get(column), datasets.Audio):
        dataset = dataset.cast_column(column, datasets.Audio(decode=False))
    return list(dataset[column])


def wavlink_model_meta(name_or_path: str, config, revision: str | None = None, n_parameters: int | None = None):
    """The `mteb.ModelMeta` of a WavLink model with this `config`; `.load_model()` returns a `WavLinkMtebEncoder`."""
    name = str(name_or_path)
    if Path(name).exists():  # mteb names results by "org/model"; a local folder gets a "local/" owner
        name = f"local/{Path(name).resolve().name}"
    dims = [int(d) for d in config.matryoshka_dims]
    bases = hub_ids(getattr(config, "base_models", None))  # folders saved before 0.2 do not record them
    return ModelMeta(
        loader=WavLinkMtebEncoder,
        loader_kwargs={"model_name": str(name_or_path)},
        name=name,
        revision=revision,
        release_date=None,
        languages=["eng-Latn"],  # ISO 639-3 and script, as mteb writes them
        n_parameters=n_parameters,
        memory_usage_mb=None,
        max_tokens=None,
        embed_dim=dims if len(dims) > 1 else dims[0],
        license=None,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch"],
        reference=ARXIV,
        similarity_fn_name="cosine",
        use_instructions=False,
        training_datasets=None,
        adapted_from=bases[0] if len(bases) == 1 else None,
        modalities=["audio", "text"],
    )
