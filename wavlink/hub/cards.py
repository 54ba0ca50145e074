"""Model cards: a README.md with YAML metadata (huggingface_hub's `ModelCardData` / `EvalResult`), usage code,
training and evaluation details, and limitations."""

import json
import os
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..evaluation.metrics import HEADLINE_METRICS

# Each evaluation's Hub task id (model-index `task.type`) and the name shown for it. The Hub has no audio-text
# retrieval task: retrieval by embeddings is listed under feature extraction.
TASK_TYPES = {
    "retrieval": ("feature-extraction", "Audio-text retrieval"),
    "zero-shot": ("zero-shot-audio-classification", "Zero-shot audio classification"),
    "multiple-choice": ("audio-classification", "Audio multiple choice"),
}
# The captions every WavLink model is trained on, and its text towers, are English.
LANGUAGE = "en"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CARD_METRICS = HEADLINE_METRICS
RESULTS_FILE = "wavlink_eval_results.json"

USAGE = """```python
from transformers import AutoModel, AutoProcessor, pipeline

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)

batch = processor(audio=["dog.wav"], text=["a dog barks", "rain on a roof"])
print(model(**batch).logits_per_audio.softmax(-1))

# Compact embeddings: any Matryoshka size of {dims}
audio = model.get_audio_features(**processor(audio=["dog.wav"]), dim={small}).pooler_output

# Embedding pipeline (L2-normalised numpy arrays)
embed = pipeline(model="{repo}", trust_remote_code=True)
vectors = embed(audio=["a.wav", "b.mp3"], dim={small})
```"""

LIMITATIONS = """- Audio is resampled to 16 kHz mono; content above 8 kHz and spatial cues are lost.
- Clips longer than 30 s are embedded as the mean of 30-s windows, which blurs events that happen once.
- Captions are English only, and the text tower truncates long texts (77 tokens for CLIP).
- Retrieval quality follows the training captions: expect weaker results on music and speech content than on
  everyday sounds, and on sound categories absent from the training sets.
- Truncated (Matryoshka) embeddings trade accuracy for size; see the tables for how much at each dimension."""


def eval_results_for_card(records: list[dict], dim: int | None = None) -> list[EvalResult]:
    """`EvalResult`s (model-index) from evaluation records, at `dim` (default: each record's largest dim)."""
    results = []
    for record in records:
        by_dim = record["results"]
        chosen = str(dim) if dim is not None and str(dim) in by_dim else max(by_dim, key=int)
        for metric in CARD_METRICS[record["task"]]:
            if metric in by_dim[chosen]:
                results.append(
                    EvalResult(
                        task_type=TASK_TYPES[record["task"]][0],
                        task_name=TASK_TYPES[record["task"]][1],
                        dataset_type=record["dataset"],
                        dataset_name=record["dataset"],
                        metric_type=metric,
                        metric_value=round(float(by_dim[chosen][metric]), 2),
                        metric_name=f"{metric} (d={chosen})",
                    )
                )
    return results


def render_model_card(
    config,
    repo_id: str,
    records: list[dict] | None = None,
    training: dict | None = None,
    datasets: list[str] | None = None,
    adapter: bool = False,
    base_models: list[str] | None = None,
) -> ModelCard:
    """Build the card for a WavLink model whose config is `config`. `base_models` (default: the config's) are the
    checkpoints it started from; those that are Hub ids become `base_model`."""
    records = records or []
    dims = list(config.matryoshka_dims)
    data = ModelCardData(
        base_model=hub_ids(base_models if base_models is not None else config.base_models) or None,
        language=LANGUAGE,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="zero-shot-audio-classification",
        tags=["wavlink", "audio", "audio-text-retrieval", "contrastive", "matryoshka", "whisper", "custom_code"]
        + (["lora"] if adapter else []),
        license="apache-2.0",
        datasets=datasets or None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results_for_card(records) or None,
    )
    audio, text = config.audio_config, config.text_config
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        "A [WavLink](https://arxiv.org/abs/2601.15118) audio-text embedding model: Whisper's encoder with one "
        "learnable "
        "global token (its final state is the audio embedding) and a text encoder, projected into one L2-normalised "
        f"space of {config.projection_dim} dimensions, trained with a {config.loss_type.upper()} loss and Matryoshka "
        f"supervision at {dims}.",
        "",
        "| part | value |",
        "|---|---|",
        f"| audio tower | Whisper encoder, {audio.encoder_layers} layers, width {audio.d_model} "
        f"({audio._name_or_path or 'random init'}) |",
        f"| text tower | {text.model_type}, width {text.hidden_size} ({text._name_or_path or 'random init'}), "
        f"{config.text_pooling} pooling |",
        f"| audio pooling | {config.audio_pooling} |",
        f"| embedding sizes | {dims} |",
        "",
        "## Usage",
        "",
        (
            USAGE.format(repo=repo_id, dims=dims, small=dims[-1])
            if not adapter
            else "This repository holds a LoRA adapter (with WavLink's global token, projectors and temperature). "
            'Load it onto its base model with `peft.PeftModel.from_pretrained(base_model, "' + repo_id + '")`; '
            "`wavlink_base.json` names the base."
        ),
        "",
    ]
    if training:
        lines += ["## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in training.items()]
        lines.append("")
    if records:
        from ..evaluation.report import markdown_table

        lines += [
            "## Evaluation",
            "",
            "Retrieval follows the WavCaps / LAION-CLAP protocol; audio-to-text mAP@10 uses the ranks of a clip's "
            "captions sorted ascending (LAION-CLAP's code does not sort, which inflates it). Ties count against "
            'the model. Zero-shot prompts: "This is a sound of {label}."',
            "",
        ]
        for record in records:
            lines += [
                f"### {record['task']}: {record['dataset']}",
                "",
                markdown_table({int(d): m for d, m in record["results"].items()}, record["task"]),
                "",
            ]
    else:
        lines += ["## Evaluation", "", "Not evaluated yet.", ""]
    lines += [
        "## Limitations",
        "",
        LIMITATIONS,
        "",
        "## Citation",
        "",
        "```bibtex",
        "@inproceedings{wavlink2026,",
        "  title={WavLink: Compact Audio-Text Embeddings with a Global Whisper Token},",
        "  booktitle={ICASSP}, year={2026}, note={arXiv:2601.15118}",
        "}",
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def hub_ids(names) -> list[str]:
    """The names that are Hub repo ids (`owner/name`, and not a local folder): what `base_model` may hold."""
    return [str(n) for n in names or [] if HUB_ID.match(str(n)) and not os.path.exists(str(n))]


def add_results(model_dir, records: list[dict]) -> list[dict]:
    """Merge evaluation records into `<model_dir>/wavlink_eval_results.json` (same task and dataset replaced)."""
    path = Path(model_dir) / RESULTS_FILE
    existing = json.loads(path.read_text()) if path.exists() else []
    keys = {(r["task"], r["dataset"]) for r in records}
    merged = [r for r in existing if (r["task"], r["dataset"]) not in keys] + records
    path.write_text(json.dumps(merged, indent=2))
    return merged


def write_model_card(model_dir, repo_id: str | None = None, records: list[dict] | None = None, **kwargs) -> Path:
    """Write `<model_dir>/README.md` from the saved config and any results recorded beside it."""
    model_dir = Path(model_dir)
    adapter = (model_dir / "adapter_config.json").exists()
    from configuration_wavlink import WavLinkConfig

    base_models = None
    if adapter:  # the base it applies to: the checkpoint it was trained on, else its towers
        base = json.loads((model_dir / "wavlink_base.json").read_text())
        config = WavLinkConfig(**base["config"])
        base_models = [base["model_name_or_path"]] if base.get("model_name_or_path") else [
            base.get("audio_tower"), base.get("text_tower")]  # fmt: skip
    else:
        # The installed class reads the config: AutoConfig with trust_remote_code would run the folder's code.
        config = WavLinkConfig.from_pretrained(model_dir)
    if records:
        add_results(model_dir, records)
    results_path = model_dir / RESULTS_FILE
    all_records = json.loads(results_path.read_text()) if results_path.exists() else []
    card = render_model_card(
        config, repo_id or model_dir.name, all_records, adapter=adapter, base_models=base_models, **kwargs
    )
    card.save(model_dir / "README.md")
    return model_dir / "README.md"
