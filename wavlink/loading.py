"""Load a saved WavLink model (full or LoRA adapter) and its processor for the tools, with clear errors.

The installed WavLink classes load every folder and Hub repo: no code from the folder runs, unless the caller asks
for it with `trust_remote_code=True` (the tools' `--trust_remote_code`), which loads through the Auto classes and the
folder's own `modeling_wavlink.py`.
"""

import json
from pathlib import Path

import torch


def add_trust_remote_code_argument(parser) -> None:
    """The tools' `--trust_remote_code` flag (off by default)."""
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="load the model through the Auto classes and run the Python files of its folder or repo (off: the "
        "installed WavLink classes load it, and no code from it runs)",
    )


def add_device_arguments(parser, workers: bool = True) -> None:
    """The tools' `--device` (and `--num_workers`) options."""
    parser.add_argument(
        "--device",
        default=None,
        help="where the model runs: cuda, cuda:1, cpu, ... (default: CUDA if available, else CPU; under "
        "`accelerate launch` each process uses its own device)",
    )
    if workers:
        parser.add_argument(
            "--num_workers",
            type=int,
            default=None,
            help="DataLoader workers decoding audio beside the model (default: on a GPU one per spare CPU core, at "
            "most 32; on a CPU 0, decoding in the main process, as the model's threads use every core)",
        )


def resolve_device(name: str | None, accelerator=None) -> torch.device:
    """The device a tool runs on: the accelerator's in a multi-process run, else `name`, else CUDA when available.
    A named device that is not available fails here, naming the option."""
    if accelerator is not None and accelerator.num_processes > 1:
        return accelerator.device
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a device ({error}).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: no CUDA device is available here (use --device cpu).")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


def load_model_and_processor(
    name_or_path: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, revision: str | None = None
):
    """A WavLink model and processor from a local folder or Hub id (at `revision`, a branch, tag or commit, when
    given). A folder written by a LoRA run (`adapter_config.json` + `wavlink_base.json`) is loaded onto its base
    model."""
    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"model {name_or_path!r} is a file; give the folder holding config.json (or a Hub id).")
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1  # Hub ids are "owner/name"
    if looks_local and not path.exists():
        raise ValueError(f"model folder {name_or_path!r} does not exist.")
    try:
        if (path / "adapter_config.json").exists():
            model = _load_adapter(path, dtype, trust_remote_code)
        else:
            model = _load_full(name_or_path, dtype, trust_remote_code, revision)
        processor = _load_processor(name_or_path, trust_remote_code, revision)
    except OSError as error:
        raise ValueError(f"cannot load a WavLink model from {name_or_path!r}: {str(error).splitlines()[0]}") from None
    if getattr(model.config, "model_type", None) != "wavlink":
        raise ValueError(f"{name_or_path!r} holds a {model.config.model_type!r} model, not WavLink.")
    return model.eval(), processor


def _load_full(name_or_path: str, dtype, trust_remote_code: bool, revision: str | None = None):
    if trust_remote_code:
        from transformers import AutoModel

        return AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype, revision=revision)
    from configuration_wavlink import WavLinkConfig
    from modeling_wavlink import WavLinkModel

    config_dict, _ = WavLinkConfig.get_config_dict(name_or_path, revision=revision)
    if config_dict.get("model_type") != WavLinkConfig.model_type:
        raise ValueError(f"{name_or_path!r} holds a {config_dict.get('model_type')!r} model, not WavLink.")
    return WavLinkModel.from_pretrained(name_or_path, dtype=dtype, revision=revision)


def _load_processor(name_or_path: str, trust_remote_code: bool, revision: str | None = None):
    if trust_remote_code:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True, revision=revision)
    from processing_wavlink import WavLinkProcessor

    return WavLinkProcessor.from_pretrained(name_or_path, revision=revision)


def _load_adapter(path: Path, dtype, trust_remote_code: bool):
    from peft import PeftModel

    from modeling_wavlink import WavLinkModel

    base = json.loads((path / "wavlink_base.json").read_text())
    if base.get("model_name_or_path"):
        model = _load_full(base["model_name_or_path"], dtype, trust_remote_code)
    else:
        config = base["config"]
        overrides = {
            k: config[k] for k in ("loss_type", "audio_pooling", "text_pooling", "matryoshka_dims") if k in config
        }
        model = WavLinkModel.from_towers(
            base["audio_tower"], base["text_tower"], config["projection_dim"], dtype=dtype, **overrides
        )
    return PeftModel.from_pretrained(model, str(path))
