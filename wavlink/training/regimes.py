"""Fine-tuning regimes (full, LoRA through peft, projector-only), the parameters they train, and AdamW's groups.

`model_args` is `train.ModelArguments` (or anything with its `finetune`, `train_towers`, `lora_*` fields).
"""

# LoRA targets per tower family (attention projections).
LORA_TARGETS = {
    "whisper": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "clip_text_model": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "modernbert": ["Wqkv", "Wo"],
}
LORA_TARGETS_BERT_LIKE = ["query", "key", "value"]
# Trained and saved beside LoRA adapters: the parts of WavLink that are new, not pretrained tower weights.
WAVLINK_HEADS = ["audio_global_token", "audio_projection", "text_projection", "logit_head"]


def lora_target_modules(model, model_args) -> str:
    """A regex over module names: LoRA on the attention projections of the towers in scope."""
    if model_args.lora_target_modules:
        names = model_args.lora_target_modules
        towers = ["audio_model"] + (["text_model"] if model_args.train_towers == "both" else [])
    else:
        names = list(LORA_TARGETS["whisper"])
        towers = ["audio_model"]
        if model_args.train_towers == "both":
            names += LORA_TARGETS.get(model.config.text_config.model_type, LORA_TARGETS_BERT_LIKE)
            towers.append("text_model")
    return rf"^({'|'.join(towers)})\..*\.({'|'.join(sorted(set(names)))})$"


def apply_regime(model, model_args):
    """Freeze or wrap the model for the chosen regime; returns the model to train."""
    if model_args.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        present = [name for name in WAVLINK_HEADS if getattr(model, name, None) is not None]
        config = LoraConfig(
            r=model_args.lora_rank,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=lora_target_modules(model, model_args),
            modules_to_save=present,
        )
        return get_peft_model(model, config)
    if model_args.finetune == "projector":
        model.audio_model.requires_grad_(False)
        model.text_model.requires_grad_(False)
    elif model_args.train_towers == "audio":
        model.text_model.requires_grad_(False)
    # Whisper keeps its sinusoidal positions fixed whatever the regime.
    model.audio_model.embed_positions.requires_grad_(False)
    return model


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# The parts WavLink adds to the pretrained towers (matched in parameter names, LoRA-wrapped or not).
NEW_PARAMETERS = ("global_token", "audio_projection", "text_projection", "logit_head")


def is_new_parameter(name: str) -> bool:
    return any(part in name for part in NEW_PARAMETERS)


def parameter_groups(
    model,
    weight_decay: float,
    learning_rate: float | None = None,
    new_lr_multiplier: float = 1.0,
    separate_new: bool = False,
):
    """AdamW groups. Weight decay on matrices only: never on norms, biases, the temperature/bias or the global token.
    With `learning_rate`, each group carries its rate: the towers `learning_rate`, WavLink's new parts (global token,
    projectors, temperature) `learning_rate * new_lr_multiplier`, since they start from scratch and the towers do
    not. The new parts get groups of their own (marked `new_parameters: True`) when their rate differs or when
    `separate_new` asks (a schedule of their own: the towers' warm start)."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (param.ndim < 2 or "logit_head" in name or "global_token" in name)
        # one rate and one schedule: the two groups of WavLink 0.1 (its checkpoints' optimizer states still load)
        new = is_new_parameter(name) and (new_lr_multiplier != 1 or separate_new)
        groups.setdefault((decays, new), []).append(param)
    result = []
    for (decays, new), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1])):
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0, "new_parameters": new}
        if learning_rate is not None:
            group["lr"] = learning_rate * (new_lr_multiplier if new else 1.0)
        result.append(group)
    return result
