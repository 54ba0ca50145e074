"""Load a saved WavLink model (full or LoRA adapter) and its processor, with clear errors."""

import json
from pathlib import Path

import torch


def load_model_and_processor(name_or_path: str, dtype: torch.dtype = torch.float32):
    """A WavLink model and processor from a local folder or Hub id. A folder written by a LoRA run
    (`adapter_config.json` + `wavlink_base.json`) is loaded onto its base model."""
    from transformers import AutoModel, AutoProcessor

    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"model {name_or_path!r} is a file; give the folder holding config.json (or a Hub id).")
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1  # Hub ids are "owner/name"
    if looks_local and not path.exists():
        raise ValueError(f"model folder {name_or_path!r} does not exist.")
    try:
        if (path / "adapter_config.json").exists():
            model = _load_adapter(path, dtype)
        else:
            model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype)
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
    except OSError as error:
        raise ValueError(f"cannot load a WavLink model from {name_or_path!r}: {str(error).splitlines()[0]}") from None
    if getattr(model.config, "model_type", None) != "wavlink":
        raise ValueError(f"{name_or_path!r} holds a {model.config.model_type!r} model, not WavLink.")
    return model.eval(), processor


def _load_adapter(path: Path, dtype):
    from peft import PeftModel
    from transformers import AutoModel

    from modeling_wavlink import WavLinkModel

    base = json.loads((path / "wavlink_base.json").read_text())
    if base.get("model_name_or_path"):
        model = AutoModel.from_pretrained(base["model_name_or_path"], trust_remote_code=True, dtype=dtype)
    else:
        config = base["config"]
        overrides = {
            k: config[k] for k in ("loss_type", "audio_pooling", "text_pooling", "matryoshka_dims") if k in config
        }
        model = WavLinkModel.from_towers(
            base["audio_tower"], base["text_tower"], config["projection_dim"], dtype=dtype, **overrides
        )
    return PeftModel.from_pretrained(model, str(path))
