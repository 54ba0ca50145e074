"""WavLink training, evaluation and tooling.

The model itself lives in the Hub-served top-level modules (`configuration_wavlink`, `modeling_wavlink`,
`processing_wavlink`, `pipeline_wavlink`); this package holds what only training and tooling need:

- `wavlink.training`: caption tables, datasets and samplers, the synthetic demo set, the demo tokenizer,
  fine-tuning regimes, checkpoints (`train.py` at the top level drives them);
- `wavlink.evaluation`: benchmark readers, metrics, the embedding loop, tasks, reports and `wavlink-eval`;
- `wavlink.search`: the `wavlink-index` / `wavlink-search` index;
- `wavlink.hub`: `wavlink-push` and model cards.

The model classes are re-exported here lazily, so `import wavlink.evaluation.metrics` does not import torch.
"""

import importlib

_EXPORTS = {
    "WavLinkConfig": "configuration_wavlink",
    "WavLinkModel": "modeling_wavlink",
    "matryoshka_contrastive_loss": "modeling_wavlink",
    "WavLinkProcessor": "processing_wavlink",
    "load_audio": "processing_wavlink",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wavlink' has no attribute {name!r}")


__all__ = list(_EXPORTS)
