#!/usr/bin/env python
"""Train WavLink with Accelerate: full finetuning, LoRA or projector-only; CLIP or SigLIP loss with Matryoshka.

    python train.py configs/demo.yaml                                   # offline CPU demo
    accelerate launch train.py configs/wavlink-base-stage1.yaml         # any number of processes
    accelerate launch train.py configs/wavlink-base-stage2.yaml --model_name_or_path runs/wavlink-base-stage1/final

A YAML file sets any option below; command-line flags override it. `python train.py --help` lists them all.

Negatives: each process scores its rows against the embeddings of *all* processes (gathered with autograd), so a
step sees `per_device_train_batch_size * num_processes` negatives. Gradient accumulation adds steps, not negatives:
each micro-batch is its own contrastive problem.
"""

import functools
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from wavlink.training.budget import TIME_SCHEDULES, TrainingClock, progress_schedule, time_schedule
from wavlink.training.checkpoints import TrainerState, check_resumed_arguments, resolve_resume, save_checkpoint
from wavlink.training.memory import release_freed_memory
from wavlink.training.regimes import apply_regime, count_parameters, parameter_groups
from wavlink.training.token_init import GLOBAL_TOKEN_INITS, init_global_token

logger = logging.getLogger("wavlink.train")

# What `--recipe` sets where the options are not given. "wavlink" is what measured best for the global token on the
# quality benchmark (README, "Does the global token earn its place?"); "paper" is the paper's setting.
TOKEN_RECIPES = {
    "wavlink": {"global_token_init": "frame_mean", "new_parameters_lr_multiplier": 10.0},
    "paper": {"global_token_init": "normal", "new_parameters_lr_multiplier": 1.0},
}

FINETUNE = ("full", "lora", "projector")
SCOPES = ("both", "audio")
MIXED_PRECISION = ("no", "bf16", "fp16")


def _check(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise ValueError(f"--{option}: {message}")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this WavLink checkpoint (Hub id or path)."}
    )
    audio_tower: str | None = field(
        default=None, metadata={"help": "Whisper checkpoint for a new model (Hub id or path)."}
    )
    text_tower: str | None = field(
        default=None, metadata={"help": "Text checkpoint for a new model: CLIP, BERT-family or ModernBERT."}
    )
    audio_config: str | None = field(
        default=None,
        metadata={"help": "JSON WhisperConfig fields for a randomly initialised audio tower (no audio_tower)."},
    )
    text_config: str | None = field(
        default=None,
        metadata={
            "help": "JSON text config (with model_type) for a random text tower (no text_tower); its tokenizer "
            "is built from the training captions."
        },
    )
    projection_dim: int | None = field(
        default=None, metadata={"help": "Shared embedding width d (default: CLIP's projection width, else 512)."}
    )
    matryoshka_dims: list[int] | None = field(
        default=None, metadata={"help": "Matryoshka prefix sizes (default d, d/2, d/4, d/8)."}
    )
    loss_type: str | None = field(
        default=None,
        metadata={
            "help": "Contrastive loss: clip (default for a new model) or siglip. With --model_name_or_path: the "
            "checkpoint's unless given."
        },
    )
    audio_pooling: str | None = field(
        default=None,
        metadata={
            "help": "global_token (the paper; default for a new model) or mean (ablation). With "
            "--model_name_or_path: the checkpoint's unless given (a new global token starts from its initialisation)."
        },
    )
    text_pooling: str | None = field(
        default=None, metadata={"help": "eos, cls or mean (default: per text tower family, or the checkpoint's)."}
    )
    recipe: str = field(
        default="wavlink",
        metadata={
            "help": "Defaults for the token's recipe, where those options are not given: wavlink (measured on the "
            "quality benchmark: a new global token starts at the mean input frame, the new parts learn at 10x the "
            "towers' rate) or paper (the paper's: a N(0, 0.02) token, one rate for everything)."
        },
    )
    global_token_init: str | None = field(
        default=None,
        metadata={
            "help": "Where a new global token starts: normal (the paper: N(0, 0.02)) or frame_mean (the mean of the "
            "audio tower's input frames over the first 64 training clips). Default: the recipe's; a checkpoint's "
            "trained token is kept."
        },
    )
    temperature_init: float | None = field(
        default=None,
        metadata={
            "help": "Initial softmax temperature of a new model (default: 0.07 for CLIP's loss, 0.1 for SigLIP's); "
            "it is learned from there."
        },
    )
    finetune: str = field(default="full", metadata={"help": "Regime: full, lora or projector (both towers frozen)."})
    train_towers: str = field(default="both", metadata={"help": "both, or audio (text tower frozen)."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt (default per tower family)."}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Also save the LoRA-merged full model to <output_dir>/final/merged."}
    )

    def __post_init__(self):
        _check(self.finetune in FINETUNE, "finetune", f"{self.finetune!r} is not one of {FINETUNE}.")
        _check(self.train_towers in SCOPES, "train_towers", f"{self.train_towers!r} is not one of {SCOPES}.")
        _check(
            self.loss_type in (None, "clip", "siglip"),
            "loss_type",
            f"{self.loss_type!r} is not one of ('clip', 'siglip').",
        )
        _check(
            self.audio_pooling in (None, "global_token", "mean"),
            "audio_pooling",
            f"{self.audio_pooling!r} is not one of ('global_token', 'mean').",
        )
        _check(
            self.text_pooling in (None, "eos", "cls", "mean"),
            "text_pooling",
            f"{self.text_pooling!r} is not one of ('eos', 'cls', 'mean').",
        )
        _check(self.lora_rank > 0, "lora_rank", "must be positive.")
        _check(self.recipe in TOKEN_RECIPES, "recipe", f"{self.recipe!r} is not one of {tuple(TOKEN_RECIPES)}.")
        _check(
            self.global_token_init in (None, *GLOBAL_TOKEN_INITS),
            "global_token_init",
            f"{self.global_token_init!r} is not one of {GLOBAL_TOKEN_INITS}.",
        )
        _check(
            self.global_token_init in (None, "normal") or self.audio_pooling != "mean",
            "global_token_init",
            f"{self.global_token_init!r} initialises a global token; --audio_pooling mean has none.",
        )
        _check(self.temperature_init is None or self.temperature_init > 0, "temperature_init", "must be positive.")
        _check(
            self.temperature_init is None or self.model_name_or_path is None,
            "temperature_init",
            "applies to a new model; a checkpoint's temperature is already learned.",
        )
        _check(self.projection_dim is None or self.projection_dim > 0, "projection_dim", "must be positive.")
        if self.model_name_or_path is None:
            pretrained, random = (
                bool(self.audio_tower and self.text_tower),
                bool(self.audio_config and self.text_config),
            )
            _check(
                pretrained != random
                and not (self.audio_tower and self.audio_config)
                and not (self.text_tower and self.text_config),
                "audio_tower",
                "give --model_name_or_path, or both --audio_tower and --text_tower (pretrained), "
                "or both --audio_config and --text_config (random towers).",
            )
        for name in ("audio_config", "text_config"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, json.loads(value))
                except json.JSONDecodeError as error:
                    raise ValueError(f"--{name}: not valid JSON ({error}).") from None


@dataclass
class DataArguments:
    train_files: list[str] | None = field(
        default=None, metadata={"help": "Local CSV/TSV/JSON(L)/Parquet training tables (mixed if several)."}
    )
    train_datasets: list[str] | None = field(
        default=None, metadata={"help": "Hub dataset ids (or dataset folders) to train on (mixed with train_files)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name for the Hub datasets."})
    train_split: str = field(default="train", metadata={"help": "Split of the Hub training datasets."})
    train_mix_probabilities: list[float] | None = field(
        default=None,
        metadata={"help": "Sampling probabilities when mixing several training sets (default: concatenate)."},
    )
    eval_file: str | None = field(default=None, metadata={"help": "Held-out table for periodic retrieval evaluation."})
    eval_dataset: str | None = field(
        default=None, metadata={"help": "Hub dataset id for evaluation (with eval_split)."}
    )
    eval_split: str = field(default="validation", metadata={"help": "Split of the Hub evaluation dataset."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many clips."})
    audio_column: str = field(default="audio", metadata={"help": "Column with audio paths, bytes or Audio features."})
    caption_column: str = field(
        default="caption", metadata={"help": "Column with one caption or a list of captions (one is sampled per step)."}
    )
    max_audio_seconds: float = field(
        default=30.0, metadata={"help": "Longer training clips are randomly cropped to this length."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the training data (needs --max_steps)."})
    shuffle_buffer: int = field(default=1000, metadata={"help": "Shuffle buffer size when streaming."})
    max_bad_sample_fraction: float = field(
        default=0.05,
        metadata={"help": "Stop with an error when more than this share of samples is undecodable or empty."},
    )
    synthetic_demo: bool = field(
        default=False, metadata={"help": "Generate the synthetic demo dataset under <output_dir>/data and train on it."}
    )
    synthetic_train_size: int = field(default=600, metadata={"help": "Synthetic training clips."})
    synthetic_eval_size: int = field(default=100, metadata={"help": "Synthetic held-out clips."})

    def __post_init__(self):
        _check(0 <= self.max_bad_sample_fraction <= 1, "max_bad_sample_fraction", "must be within [0, 1].")
        _check(self.max_audio_seconds > 0, "max_audio_seconds", "must be positive.")
        if not self.synthetic_demo:
            _check(
                bool(self.train_files or self.train_datasets),
                "train_files",
                "give --train_files, --train_datasets or --synthetic_demo.",
            )
        for path in self.train_files or []:
            _check(Path(path).is_file(), "train_files", f"{path!r} does not exist.")
        if self.eval_file:
            _check(Path(self.eval_file).is_file(), "eval_file", f"{self.eval_file!r} does not exist.")
        if self.train_mix_probabilities:
            _check(abs(sum(self.train_mix_probabilities) - 1) < 1e-6, "train_mix_probabilities", "must sum to 1.")


@dataclass
class TrainArguments:
    output_dir: str = field(
        default="runs/wavlink", metadata={"help": "Where checkpoints, logs and the final model go."}
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Pairs per process per step."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Clips per process per evaluation batch."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (ignored when max_steps is set)."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Total optimiser steps (overrides num_train_epochs)."}
    )
    max_train_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Train for this much wall-clock time (training only: evaluation and checkpoints pause the "
            "clock), the learning-rate schedule following the share of the time spent (warm-up over warmup_ratio "
            "of it, then decay to zero as it runs out). Stops then, or at max_steps if that comes first."
        },
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate (paper: 1e-4)."})
    new_parameters_lr_multiplier: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the parts WavLink adds to the towers (global token, projectors, temperature) "
            "as a multiple of learning_rate. Default: the recipe's (wavlink 10; paper 1, one rate for everything)."
        },
    )
    freeze_towers_ratio: float = field(
        default=0.0,
        metadata={
            "help": "Warm start: for this share of the run (steps, or the time budget) only WavLink's new parts "
            "(global token, projectors, temperature) learn, on the pretrained towers held still; the towers then warm "
            "up and decay over the rest. 0 (the paper) trains everything from the first step."
        },
    )
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW weight decay (never on norms, biases, temperature or the global token)."}
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-6, metadata={"help": "AdamW epsilon."})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "transformers scheduler name (cosine, linear, constant_with_warmup, ...)."}
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of steps spent warming up (paper: 5%%)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0 disables)."})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (through Accelerate)."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches per optimiser step (adds steps, not negatives)."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward to save memory."}
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch clips of similar duration together (batch order still shuffled)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for initialisation, data order, crops and caption sampling."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    eval_steps: int | None = field(
        default=None, metadata={"help": "Evaluate every N steps (and at the end) when an eval set is given."}
    )
    save_steps: int | None = field(default=500, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep the last K checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' in output_dir."}
    )
    release_memory_steps: int = field(
        default=10,
        metadata={
            "help": "Hand freed host memory back to the OS every N steps (0: never). Variable-length batches otherwise "
            "leave the C allocator's heap fragmented and resident memory grows over a long run."
        },
    )
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "DataLoader worker processes decoding audio beside the model (default: on a GPU one per spare "
            "CPU core, at most 32; on a CPU 0, decoding in the training process, as the model's threads use every "
            "core)."
        },
    )
    report_to: str = field(
        default="tensorboard", metadata={"help": "Accelerate tracker (tensorboard, wandb, ...) or 'none'."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model and processor to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repository id for --push_to_hub."})
    cpu: bool = field(default=False, metadata={"help": "Train on CPU even if a GPU is present."})

    def __post_init__(self):
        _check(
            self.mixed_precision in MIXED_PRECISION,
            "mixed_precision",
            f"{self.mixed_precision!r} is not one of {MIXED_PRECISION}.",
        )
        _check(
            self.per_device_train_batch_size >= 2,
            "per_device_train_batch_size",
            "contrastive training needs at least 2.",
        )
        _check(self.max_steps is None or self.max_steps > 0, "max_steps", "must be positive.")
        _check(self.max_train_minutes is None or self.max_train_minutes > 0, "max_train_minutes", "must be positive.")
        _check(
            self.new_parameters_lr_multiplier is None or self.new_parameters_lr_multiplier > 0,
            "new_parameters_lr_multiplier",
            "must be positive.",
        )
        _check(
            self.max_train_minutes is None or self.lr_scheduler_type in TIME_SCHEDULES,
            "lr_scheduler_type",
            f"must be one of {', '.join(TIME_SCHEDULES)} with --max_train_minutes (the schedule follows time).",
        )
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be within [0, 1).")
        _check(0 <= self.freeze_towers_ratio < 1, "freeze_towers_ratio", "must be within [0, 1).")
        _check(
            self.freeze_towers_ratio == 0 or self.lr_scheduler_type in TIME_SCHEDULES,
            "lr_scheduler_type",
            f"must be one of {', '.join(TIME_SCHEDULES)} with --freeze_towers_ratio.",
        )
        _check(self.learning_rate > 0, "learning_rate", "must be positive.")
        _check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1.")
        _check(self.save_total_limit >= 1, "save_total_limit", "must be >= 1.")
        _check(self.per_device_eval_batch_size >= 1, "per_device_eval_batch_size", "must be >= 1.")
        _check(self.logging_steps >= 1, "logging_steps", "must be >= 1.")
        _check(self.eval_steps is None or self.eval_steps >= 1, "eval_steps", "must be >= 1 (or left out).")
        _check(self.save_steps is None or self.save_steps >= 0, "save_steps", "must be >= 0 (0 or left out: never).")
        _check(
            self.dataloader_num_workers is None or self.dataloader_num_workers >= 0, "dataloader_num_workers",
            "must be >= 0 (or left out: one per spare CPU core).",
        )  # fmt: skip
        _check(self.release_memory_steps >= 0, "release_memory_steps", "must be >= 0.")
        _check(not self.push_to_hub or bool(self.hub_model_id), "hub_model_id", "is required with --push_to_hub.")
        from transformers.trainer_utils import SchedulerType

        allowed = [s.value for s in SchedulerType]
        _check(
            self.lr_scheduler_type in allowed,
            "lr_scheduler_type",
            f"{self.lr_scheduler_type!r} is not one of {allowed}.",
        )


def parse_args(argv=None) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """`train.py [config.yaml] [--option value ...]`: YAML values become defaults, flags override them."""
    import yaml
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainArguments), description=__doc__.split("\n\n")[0])
    if argv and argv[0].endswith((".yaml", ".yml")):
        config_path = argv.pop(0)
        if not Path(config_path).is_file():
            raise ValueError(f"config file {config_path!r} does not exist.")
        values = yaml.safe_load(Path(config_path).read_text()) or {}
        known = {f.name for cls in (ModelArguments, DataArguments, TrainArguments) for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{config_path}: unknown option(s) {unknown}; see `python train.py --help`.")
        for key in ("audio_config", "text_config"):
            if isinstance(values.get(key), dict):
                values[key] = json.dumps(values[key])
        parser.set_defaults(**values)
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    if args.new_parameters_lr_multiplier is None:
        args.new_parameters_lr_multiplier = TOKEN_RECIPES[model_args.recipe]["new_parameters_lr_multiplier"]
    return model_args, data_args, args


# ------------------------------------------------------------------------------------------------ model


def config_overrides(model_args: ModelArguments) -> dict:
    """The model options given on the command line or in the YAML file (None means "not given")."""
    given = dict(
        loss_type=model_args.loss_type,
        audio_pooling=model_args.audio_pooling,
        text_pooling=model_args.text_pooling,
        matryoshka_dims=model_args.matryoshka_dims,
    )
    if model_args.temperature_init is not None:
        given["logit_scale_init_value"] = -math.log(model_args.temperature_init)
    return {name: value for name, value in given.items() if value is not None}


def checkpoint_config(model_args: ModelArguments):
    """The config a run from `--model_name_or_path` trains: the checkpoint's, with the model options given on top.

    Reads only the config, so an option that cannot apply fails before any weights load. `--projection_dim` cannot
    change (the projectors are trained at the checkpoint's width); the loss, the poolings and the Matryoshka sizes can
    (a new SigLIP bias or global token starts from its initialisation)."""
    from configuration_wavlink import WavLinkConfig

    source = model_args.model_name_or_path
    try:
        config_dict, _ = WavLinkConfig.get_config_dict(source)
    except OSError as error:
        raise ValueError(f"--model_name_or_path: cannot read a config from {source!r} ({error}).") from None
    if config_dict.get("model_type") != WavLinkConfig.model_type:
        raise ValueError(
            f"--model_name_or_path: {source!r} is a {config_dict.get('model_type')!r} checkpoint, not "
            "WavLink; start a new model with --audio_tower and --text_tower instead."
        )
    checkpoint_dim = config_dict.get("projection_dim")
    if model_args.projection_dim is not None and model_args.projection_dim != checkpoint_dim:
        raise ValueError(
            f"--projection_dim: {model_args.projection_dim} differs from the checkpoint's {checkpoint_dim}, "
            "and its projectors are trained at that width; drop the option, or start a new model from "
            "--audio_tower and --text_tower."
        )
    overrides = config_overrides(model_args)
    try:
        config = WavLinkConfig.from_dict({**config_dict, **overrides})
    except ValueError as error:
        raise ValueError(
            f"--{'/--'.join(overrides) or 'model_name_or_path'}: cannot apply to {source!r}: {error}"
        ) from None
    for name, value in overrides.items():
        if config_dict.get(name) != value:
            logger.info("%s: %r in the checkpoint, %r for this run", name, config_dict.get(name), value)
    return config


def build_model_and_processor(model_args: ModelArguments, captions_for_tokenizer, config=None):
    """The model and processor to train. `config` is `checkpoint_config(model_args)` when starting from a checkpoint."""
    from transformers import WhisperFeatureExtractor

    from configuration_wavlink import WavLinkConfig
    from modeling_wavlink import WavLinkModel
    from processing_wavlink import WavLinkProcessor
    from wavlink.training.tokenization import build_word_tokenizer

    overrides = config_overrides(model_args)
    if model_args.model_name_or_path:
        # The installed WavLink classes load the checkpoint: no code from the folder runs.
        config = config or checkpoint_config(model_args)
        config.base_models = [model_args.model_name_or_path]  # fine-tuned from this checkpoint (the card's base_model)
        model = WavLinkModel.from_pretrained(model_args.model_name_or_path, config=config, dtype=torch.float32)
        processor = WavLinkProcessor.from_pretrained(model_args.model_name_or_path)
        return model, processor
    if model_args.audio_tower and model_args.text_tower:
        model = WavLinkModel.from_towers(
            model_args.audio_tower, model_args.text_tower, model_args.projection_dim, **overrides
        )
        processor = WavLinkProcessor.from_towers(model_args.audio_tower, model_args.text_tower)
        return model, processor
    # Random towers (the offline demo): a Whisper-shaped audio tower and a tokenizer built from the captions.
    tokenizer = build_word_tokenizer(captions_for_tokenizer)
    text_config = dict(model_args.text_config)
    text_config.setdefault("model_type", "bert")
    text_config.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    text_config.setdefault("max_position_embeddings", tokenizer.model_max_length)
    config = WavLinkConfig(
        audio_config=model_args.audio_config,
        text_config=text_config,
        projection_dim=model_args.projection_dim or 512,
        **overrides,
    )
    model = WavLinkModel(config)
    extractor = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins, return_attention_mask=False)
    return model, WavLinkProcessor(extractor, tokenizer)


# ------------------------------------------------------------------------------------------------ data


def load_tables(data_args: DataArguments, output_dir: str, accelerator):
    from wavlink.training.data import combine_tables, load_caption_table

    train_files = list(data_args.train_files or [])
    eval_file = data_args.eval_file
    if data_args.synthetic_demo:
        from wavlink.training.synthetic import generate_dataset

        data_dir = Path(output_dir) / "data"
        if accelerator.is_main_process:
            generate_dataset(data_dir, data_args.synthetic_train_size, data_args.synthetic_eval_size, seed=0)
        accelerator.wait_for_everyone()
        paths = generate_dataset(data_dir, data_args.synthetic_train_size, data_args.synthetic_eval_size, seed=0)
        train_files.append(str(paths["train"]))
        eval_file = eval_file or str(paths["eval"])
    columns = dict(audio_column=data_args.audio_column, caption_column=data_args.caption_column)
    tables = [load_caption_table(f, streaming=data_args.streaming, **columns) for f in train_files]
    tables += [
        load_caption_table(
            d,
            split=data_args.train_split,
            dataset_config=data_args.dataset_config,
            streaming=data_args.streaming,
            **columns,
        )
        for d in data_args.train_datasets or []
    ]
    train = combine_tables(tables, data_args.train_mix_probabilities)
    evaluation = None
    if eval_file or data_args.eval_dataset:
        source = eval_file or data_args.eval_dataset
        evaluation = load_caption_table(
            source, split=data_args.eval_split, dataset_config=data_args.dataset_config, **columns
        )
        if data_args.max_eval_samples:
            evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation


def eval_clips_and_captions(table):
    from wavlink.training.data import describe_row, parse_captions

    clips, captions = [], []
    for index, row in enumerate(table):
        clips.append(row["audio"])
        captions.append(parse_captions(row["caption"], describe_row(index, row["audio"])))
    return clips, captions


def check_eval_clips(clips) -> None:
    """Read every held-out file's header now, so a bad evaluation file stops the run before training, not hours in."""
    import soundfile

    bad = []
    for index, clip in enumerate(clips):
        path = (
            clip
            if isinstance(clip, str)
            else clip.get("path")
            if isinstance(clip, dict) and not clip.get("bytes")
            else None
        )
        if path is None:
            continue
        try:
            soundfile.info(path)
        except Exception as error:  # LibsndfileError, RuntimeError or OSError, by version
            bad.append(f"clip {index} ({path}): {type(error).__name__}")
    if bad:
        raise ValueError(
            f"{len(bad)} evaluation clip(s) cannot be read: " + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        )


def sample_captions(table, limit: int = 20000) -> list[str]:
    """Captions to build a demo tokenizer from (every phrasing in the first `limit` rows)."""
    from wavlink.training.data import parse_captions

    captions = []
    for index, row in enumerate(table.select_columns(["caption"])):
        if index >= limit:
            break
        try:
            captions.extend(parse_captions(row["caption"], f"row {index}"))
        except ValueError:
            continue
    return captions


# ------------------------------------------------------------------------------------------------ checkpoints


# ------------------------------------------------------------------------------------------------ training


def run_evaluation(model, processor, eval_data, accelerator, batch_size, dims):
    from wavlink.evaluation.metrics import RETRIEVAL_METRICS
    from wavlink.evaluation.tasks import evaluate_retrieval

    clips, captions = eval_data
    was_training = model.training
    model.eval()
    results = evaluate_retrieval(
        model, processor, clips, captions, accelerator=accelerator, batch_size=batch_size, dims=dims
    )
    model.train(was_training)
    flat = {}
    for dim, metrics in results.items():
        for name in RETRIEVAL_METRICS:
            flat[f"eval/{name}@{dim}"] = metrics[name]
    return results, flat


class JsonlLogger:
    """Appends records to `log.jsonl` (main process only). A resumed run first drops the records past the step it
    resumes from (the steps between the last checkpoint and the kill), so the log holds each step once."""

    def __init__(self, path: Path, enabled: bool, resumed_step: int | None = None):
        self.path, self.enabled = path, enabled
        if enabled and resumed_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line).get("step", 0) <= resumed_step]
            partial = path.with_name(path.name + ".tmp")
            partial.write_text("".join(line + "\n" for line in kept))
            os.replace(partial, path)

    def __call__(self, record: dict):
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def train(argv=None):
    """Run training; returns `(unwrapped_model, processor, final_dir)`."""
    from accelerate.utils import set_seed

    # 1. Options: every one is validated here, before any weights load.
    model_args, data_args, args = parse_args(argv)
    check_run_options(model_args, data_args, args)
    start_config = checkpoint_config(model_args) if model_args.model_name_or_path else None
    token_init = resolve_global_token_init(model_args)
    output_dir = Path(args.output_dir)
    run_arguments = {**asdict(model_args), **asdict(data_args), **asdict(args)}
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    resumed_changes = check_resumed_arguments(resume, run_arguments) if resume is not None else []

    # 2. Processes, logging, seed.
    accelerator = make_accelerator(args, data_args.streaming)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)

    # 3. Data tables (the synthetic set is written by the main process first), held-out files checked now.
    train_table, eval_table = load_tables(data_args, args.output_dir, accelerator)
    eval_data = eval_clips_and_captions(eval_table) if eval_table is not None else None
    if eval_data:
        check_eval_clips(eval_data[0])

    # 4. Model, processor and fine-tuning regime.
    needs_tokenizer = model_args.model_name_or_path is None and model_args.text_config is not None
    captions = sample_captions(train_table) if needs_tokenizer else None
    model, processor = build_model_and_processor(model_args, captions, config=start_config)
    init_global_token(model, processor, train_table, token_init, max_seconds=data_args.max_audio_seconds)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_regime(model, model_args)
    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    log_parameter_counts(model, model_args)

    # 5. Loader, then the schedule sized in optimizer steps, before `prepare`.
    loader, epochs, steps_per_epoch = make_train_loader(train_table, processor, data_args, args, accelerator)
    clock = TrainingClock(args.max_train_minutes * 60) if args.max_train_minutes else None
    if clock is not None:  # the budget, not an epoch count, ends the run
        max_steps = args.max_steps or sys.maxsize
    else:
        max_steps = args.max_steps or math.ceil(args.num_train_epochs * steps_per_epoch)
    optimizer, scheduler = make_optimizer_and_schedule(model, args, max_steps, clock)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    # 6. Resume.
    state = TrainerState()
    if resume is not None:
        # accelerate loads weights from safetensors and optimizer, scheduler and RNG states with torch's
        # weights-only unpickler; the run's progress comes from JSON. (No object is registered with accelerate:
        # it would be saved as a pickle and loaded with weights_only=False, so a crafted checkpoint could run code.)
        refuse_pickled_objects(resume)
        accelerator.load_state(str(resume))
        state.load_state_dict(json.loads((resume / "trainer_state.json").read_text()))
        if clock is not None:
            clock.spent = state.train_seconds
        logger.info("resumed from %s at step %d", resume, state.step)
        for change in resumed_changes:
            logger.info("applies from the resumed step on: %s", change)
    elif args.resume_from_checkpoint == "latest":
        logger.info("no checkpoint in %s yet; starting from scratch", args.output_dir)

    # 7. Train.
    from wavlink.training.loss import DistributedContrastiveLoss

    config = base_model.config
    contrastive_loss = DistributedContrastiveLoss(
        config.loss_type, config.matryoshka_dims, accelerator.process_index, accelerator.num_processes
    )
    init_tracking(accelerator, base_model, run_arguments)
    log_jsonl = JsonlLogger(output_dir / "log.jsonl", accelerator.is_main_process, state.step if resume else None)
    window = LogWindow(accelerator)
    evaluate = functools.partial(
        evaluate_and_log, accelerator, model, processor, eval_data, args, config.matryoshka_dims
    )
    model.train()
    total = None if max_steps == sys.maxsize else max_steps
    progress = tqdm(total=total, initial=state.step, disable=not accelerator.is_main_process, desc="train")
    last_results = None
    out_of_time = False
    if clock is not None:
        clock.start()
    while state.step < max_steps and not out_of_time:
        for batch in epochs.batches(accelerator, loader, state):
            num_bad, num_samples = batch.pop("num_bad"), batch.pop("num_samples")
            batch.update(log_mel_on_device(processor, batch))
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss, logit_scale = contrastive_loss(outputs), outputs.logit_scale.detach()
                del outputs  # the towers' activations are not kept alive past the backward pass
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad()
            state.batches_in_epoch += 1
            window.add(state, loss, num_bad, num_samples)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            progress.update(1)
            if clock is not None:  # stopped while logging, evaluating and saving: they are not training time
                clock.stop_and_sync(accelerator)  # the slowest process's clock: all stop at the same step
                state.train_seconds, out_of_time = clock.spent, clock.done
            if args.release_memory_steps and state.step % args.release_memory_steps == 0:
                release_freed_memory()
            check_bad_fraction(state, data_args.max_bad_sample_fraction)
            last_step = state.step == max_steps or out_of_time
            if state.step % args.logging_steps == 0 or last_step:
                record = window.record(state, learning_rates(optimizer), logit_scale)
                if clock is not None:
                    record["train_seconds"] = round(clock.spent, 3)
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=state.step)
                log_jsonl(record)
            if eval_data and args.eval_steps and state.step % args.eval_steps == 0 and not last_step:
                last_results = evaluate(state, log_jsonl)
            if args.save_steps and state.step % args.save_steps == 0:
                save_checkpoint(accelerator, output_dir, state, args.save_total_limit, run_arguments)
            if clock is not None:
                clock.start()
            if last_step:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()

    # 8. Evaluate, save, push.
    if eval_data:
        last_results = evaluate(state, log_jsonl)
    final_dir = save_final(accelerator, model, processor, model_args, output_dir)
    if accelerator.is_main_process:
        publish(
            final_dir, last_results, eval_data, state, model_args, data_args, args, accelerator.num_processes, config
        )
    accelerator.end_training()
    if accelerator.is_main_process:
        report(last_results, final_dir, state, len(eval_data[0]) if eval_data else 0)
    return accelerator.unwrap_model(model), processor, final_dir


def refuse_pickled_objects(checkpoint: Path) -> None:
    """accelerate would load `custom_checkpoint_*.pkl` with `weights_only=False`, which runs any code a crafted file
    holds. WavLink never writes them (WavLink 0.1 did, for the progress now kept in `trainer_state.json`)."""
    pickles = sorted(p.name for p in checkpoint.glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise ValueError(
            f"--resume_from_checkpoint: {checkpoint} holds {', '.join(pickles)}, a pickle that loading would execute "
            "and that WavLink does not need (its progress is in trainer_state.json). It is not loaded; delete it to "
            "resume from this checkpoint."
        )


def resolve_global_token_init(model_args: ModelArguments) -> str:
    """How to initialise the global token: as given, else the recipe's for a new token; "normal" leaves the model's
    own (no token, or one a checkpoint trained). Asking to re-initialise a checkpoint's trained token is refused."""
    from configuration_wavlink import WavLinkConfig

    checkpoint_pooling = None
    if model_args.model_name_or_path:
        checkpoint_pooling = WavLinkConfig.get_config_dict(model_args.model_name_or_path)[0].get("audio_pooling")
    pooling = model_args.audio_pooling or checkpoint_pooling or "global_token"
    trained = checkpoint_pooling == "global_token"
    if model_args.global_token_init is not None:
        if model_args.global_token_init != "normal" and trained and pooling == "global_token":
            raise ValueError(
                f"--global_token_init: {model_args.model_name_or_path!r} already has a trained global token; the "
                "option applies to a new one (a new model, or a checkpoint trained with mean pooling)."
            )
        return model_args.global_token_init
    if pooling != "global_token" or trained:
        return "normal"
    return TOKEN_RECIPES[model_args.recipe]["global_token_init"]


def check_run_options(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments) -> None:
    """The checks that need options from more than one group."""
    if args.freeze_towers_ratio and model_args.finetune == "projector":
        raise ValueError("--freeze_towers_ratio: --finetune projector never trains the towers; drop one of the two.")
    if data_args.streaming and not (args.max_steps or args.max_train_minutes):
        raise ValueError(
            "--streaming needs --max_steps or --max_train_minutes (a stream has no length to count epochs by)."
        )
    if data_args.streaming and args.group_by_length:
        raise ValueError("--group_by_length needs durations of the whole set and does not work with --streaming.")


def make_accelerator(args: TrainArguments, streaming: bool):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        cpu=args.cpu,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        # The schedule is sized in optimizer steps and stepped once per optimizer step in `train`. (Accelerate's
        # default steps it num_processes times per step, for schedules sized by one process's view of the data.)
        step_scheduler_with_optimizer=False,
        # Streaming shards are read by each process itself; batches are never dispatched from process 0.
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False if streaming else None),
    )
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
    )
    return accelerator


def log_parameter_counts(model, model_args: ModelArguments) -> None:
    trainable, total = count_parameters(model)
    logger.info(
        "regime=%s towers=%s: %s trainable of %s parameters (%.2f%%)",
        model_args.finetune,
        model_args.train_towers,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )


class Epochs:
    """Sets every epoch-dependent order before an epoch's batches are drawn, and skips the batches a resumed run has
    already trained on."""

    def __init__(self, dataset, batch_sampler=None):
        self.dataset, self.batch_sampler = dataset, batch_sampler

    def batches(self, accelerator, loader, state: TrainerState):
        if self.batch_sampler is None:  # a stream: each process reads its own shard, endlessly
            return loader
        # accelerate re-applies its loader's own epoch counter to sampler and dataset on every iteration (and a
        # skipping loader inherits it), so set it first; a sampler wrapped for several processes is not reached by
        # it, so set that directly as well.
        loader.set_epoch(state.epoch)
        self.batch_sampler.set_epoch(state.epoch)
        self.dataset.set_epoch(state.epoch)
        return accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader


def make_train_loader(train_table, processor, data_args: DataArguments, args: TrainArguments, accelerator):
    """Returns `(loader, epochs, steps_per_epoch)`; `steps_per_epoch` is None for a stream."""
    from torch.utils.data import DataLoader

    from pipeline_wavlink import default_num_workers
    from wavlink.training.data import (
        AudioCaptionCollator,
        AudioCaptionDataset,
        LengthGroupedBatchSampler,
        StreamingAudioCaptionDataset,
    )

    collate = AudioCaptionCollator(processor)
    workers = (
        default_num_workers(accelerator.device) if args.dataloader_num_workers is None else args.dataloader_num_workers
    )
    # Workers decode, crop, resample and pad on the host; the log-mel is made on the model's device in `train`.
    # (Not persistent: workers start each epoch from the dataset as `set_epoch` left it, so crops follow the epoch.)
    options = dict(
        collate_fn=collate,
        num_workers=workers,
        pin_memory=accelerator.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    if data_args.streaming:
        from datasets.distributed import split_dataset_by_node

        shard = split_dataset_by_node(train_table, rank=accelerator.process_index, world_size=accelerator.num_processes)
        dataset = StreamingAudioCaptionDataset(shard, data_args.max_audio_seconds, args.seed, data_args.shuffle_buffer)
        batch_size = args.per_device_train_batch_size
        loader = DataLoader(dataset, batch_size=batch_size, drop_last=True, **options)
        return loader, Epochs(dataset), None
    dataset = AudioCaptionDataset(train_table, data_args.max_audio_seconds, args.seed)
    lengths = dataset.durations() if args.group_by_length else [0.0] * len(dataset)
    # Global batches are drawn by one sampler and dealt to processes batch by batch, so the data order is the same
    # for any number of processes.
    sampler = LengthGroupedBatchSampler(lengths, args.per_device_train_batch_size, args.seed, args.group_by_length)
    loader = DataLoader(dataset, batch_sampler=sampler, **options)
    steps_per_epoch = len(sampler) // accelerator.num_processes // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set ({len(dataset)} rows) is smaller than one global batch "
            f"({args.per_device_train_batch_size} x {accelerator.num_processes} processes x "
            f"{args.gradient_accumulation_steps} accumulation)."
        )
    return loader, Epochs(dataset, sampler), steps_per_epoch


def log_mel_on_device(processor, batch: dict) -> dict:
    """The batch's log-mel features, made where its padded waveforms are (the accelerator's device): one batched STFT
    instead of one per clip on the host."""
    return processor.log_mel(
        batch.pop("padded_waveforms"), batch.pop("waveform_lengths"), batch.pop("audio_window_counts", None)
    )


def make_optimizer_and_schedule(model, args: TrainArguments, max_steps: int, clock=None):
    """AdamW over the trainable parameters, and a schedule of `max_steps` optimizer steps (or, with a `clock`, one
    that follows the share of the time budget spent)."""
    from transformers import get_scheduler

    warm_start = args.freeze_towers_ratio > 0
    groups = parameter_groups(
        model, args.weight_decay, args.learning_rate, args.new_parameters_lr_multiplier, separate_new=warm_start
    )
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_epsilon)  # fmt: skip
    if clock is not None:
        schedule = time_schedule(optimizer, args.lr_scheduler_type, args.warmup_ratio, clock, args.freeze_towers_ratio)
        return optimizer, schedule
    if warm_start:  # the new parts and the towers on schedules of their own, in steps
        schedule = progress_schedule(optimizer, args.lr_scheduler_type, args.warmup_ratio,
                                     lambda step: step / max_steps, args.freeze_towers_ratio)  # fmt: skip
        return optimizer, schedule
    warmup = int(args.warmup_ratio * max_steps)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)
    return optimizer, scheduler


def learning_rates(optimizer) -> dict:
    """The rates to log: `lr`, the towers' (the only one when all parts share it), and `lr_new_parameters`, the new
    parts' when they have a rate or a schedule of their own."""
    towers = [g["lr"] for g in optimizer.param_groups if not g.get("new_parameters")]
    new = [g["lr"] for g in optimizer.param_groups if g.get("new_parameters")]
    rates = {"lr": (towers or new)[0]}
    if towers and new:
        rates["lr_new_parameters"] = new[0]
    return rates


def init_tracking(accelerator, base_model, run_arguments: dict) -> None:
    if not accelerator.is_main_process:
        return
    # The model options as they apply (from the checkpoint where not given), not as typed.
    effective = {
        name: getattr(base_model.config, name)
        for name in ("projection_dim", "matryoshka_dims", "loss_type", "audio_pooling", "text_pooling")
    }
    flat = {
        k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in {**run_arguments, **effective}.items()
    }
    accelerator.init_trackers("wavlink", config=flat)


class LogWindow:
    """What is logged over the steps since the last log line, global across processes: the loss is the mean of the
    processes' losses (each is its rows' share of the global batch), samples count every process's samples."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self._reset()

    def _reset(self):
        self.start, self.samples, self.micro = time.perf_counter(), 0, 0
        self.loss = torch.zeros((), device=self.accelerator.device)

    def add(self, state: TrainerState, loss, num_bad, num_samples) -> None:
        """One micro-batch: updates the run's global sample counts in `state` too."""
        counts = torch.stack([num_bad, num_samples]).to(self.accelerator.device)
        bad, seen = (int(x) for x in self.accelerator.reduce(counts, reduction="sum"))
        state.bad_samples += bad
        state.samples_seen += seen
        self.samples += seen - bad
        self.loss += loss.detach().float()
        self.micro += 1

    def record(self, state: TrainerState, rates: dict, logit_scale) -> dict:
        elapsed = time.perf_counter() - self.start
        record = {
            "step": state.step,
            "epoch": state.epoch,
            "loss": float(self.accelerator.reduce(self.loss / self.micro, reduction="mean")),
            **rates,
            "samples_per_second": self.samples / elapsed,
            "logit_scale": float(logit_scale),
            "samples_seen": state.samples_seen,
            "bad_samples": state.bad_samples,
            "num_processes": self.accelerator.num_processes,
        }
        self._reset()
        return record


def publish(final_dir, results, eval_data, state, model_args, data_args, args, num_processes, config) -> None:
    """Record the held-out results beside the model (for its card) and push it when asked."""
    if results:
        from wavlink.hub.cards import add_results

        add_results(
            final_dir,
            [
                {
                    "task": "retrieval",
                    "dataset": "held-out",
                    "model": str(final_dir),
                    "results": {str(d): m for d, m in results.items()},
                    "num_clips": len(eval_data[0]),
                }
            ],
        )
    if args.push_to_hub:
        from wavlink.hub.push import push_folder

        data = ", ".join((data_args.train_files or []) + (data_args.train_datasets or []))
        training = {
            "regime": model_args.finetune,
            "towers trained": model_args.train_towers,
            "loss": config.loss_type,
            "steps": state.step,
            "samples seen": state.samples_seen,
            "learning rate": args.learning_rate,
            "global batch": args.per_device_train_batch_size * num_processes,
            "training data": data or "synthetic demo",
        }
        url = push_folder(final_dir, args.hub_model_id, training=training)
        logger.info("pushed %s to %s", final_dir, url)


def check_bad_fraction(state: TrainerState, limit: float, minimum_seen: int = 50) -> None:
    if state.samples_seen >= minimum_seen and state.bad_samples > limit * state.samples_seen:
        raise RuntimeError(
            f"{state.bad_samples} of {state.samples_seen} samples "
            f"({100 * state.bad_samples / state.samples_seen:.1f}%) "
            f"could not be used, more than --max_bad_sample_fraction={limit}. The log names the bad files."
        )


def evaluate_and_log(accelerator, model, processor, eval_data, args, dims, state, log_jsonl):
    results, flat = run_evaluation(
        accelerator.unwrap_model(model), processor, eval_data, accelerator, args.per_device_eval_batch_size, dims
    )
    accelerator.log(flat, step=state.step)
    log_jsonl({"step": state.step, **flat})
    return results


def save_final(accelerator, model, processor, model_args: ModelArguments, output_dir: Path) -> Path:
    """Save the final model and processor so `AutoModel`/`AutoProcessor.from_pretrained(..., trust_remote_code=True)`
    load them. LoRA runs save the adapter (with the trained WavLink heads) and, with --merge_lora, the merged model."""
    accelerator.wait_for_everyone()
    final_dir = output_dir / "final"
    partial, previous = output_dir / "final.tmp", output_dir / "final.previous"
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        # Written beside, then renamed: a crash leaves the previous final/ (or none), never a half-written one.
        for leftover in (partial, previous):
            if leftover.exists():
                shutil.rmtree(leftover)
        write_final(partial, unwrapped, processor, model_args)
        if final_dir.exists():
            os.replace(final_dir, previous)
        os.replace(partial, final_dir)
        if previous.exists():
            shutil.rmtree(previous)
    accelerator.wait_for_everyone()
    return final_dir


def write_final(final_dir: Path, unwrapped, processor, model_args: ModelArguments) -> None:
    """The final model and processor in `final_dir`; LoRA runs add `wavlink_base.json` and, with --merge_lora,
    `merged/`."""
    unwrapped.save_pretrained(final_dir)
    processor.save_pretrained(final_dir)
    if model_args.finetune == "lora":
        base = {
            "model_name_or_path": model_args.model_name_or_path,
            "audio_tower": model_args.audio_tower,
            "text_tower": model_args.text_tower,
            "config": unwrapped.get_base_model().config.to_dict(),
        }
        (final_dir / "wavlink_base.json").write_text(json.dumps(base, indent=2, default=str))
        if model_args.merge_lora:
            import copy

            merged = copy.deepcopy(unwrapped).merge_and_unload()
            merged.save_pretrained(final_dir / "merged")
            processor.save_pretrained(final_dir / "merged")


def report(results, final_dir: Path, state: TrainerState, num_clips: int) -> None:
    lines = [
        f"Training finished at step {state.step} ({state.samples_seen} samples, {state.bad_samples} skipped as bad)."
    ]
    if results:
        lines.append(
            f"Held-out retrieval (percent; {num_clips} clips, so chance is R@1 {100 / num_clips:.1f}, "
            f"R@10 {min(100.0, 1000 / num_clips):.1f}):"
        )
        lines.append("| dim | t2a R@1 | t2a R@5 | t2a R@10 | a2t R@1 | a2t R@5 | a2t R@10 |")
        lines.append("|---|---|---|---|---|---|---|")
        for dim, m in results.items():
            lines.append(
                f"| {dim} | {m['t2a_R@1']:.1f} | {m['t2a_R@5']:.1f} | {m['t2a_R@10']:.1f} | "
                f"{m['a2t_R@1']:.1f} | {m['a2t_R@5']:.1f} | {m['a2t_R@10']:.1f} |"
            )
    lines.append(f"Model and processor saved to {final_dir.resolve()}")
    print("\n".join(lines), flush=True)


def main(argv=None) -> int:
    try:
        train(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
