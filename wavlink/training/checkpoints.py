"""Checkpoints: the progress saved with each one, atomic writing, and finding the one to resume from."""

import json
import os
import shutil
from pathlib import Path

RUN_ARGUMENTS = "run_arguments.json"
# Options a resumed run may change: they steer logging, saving, evaluation, the length of the run or the machine, not
# what the checkpoint's weights, optimizer state and data order mean. Any other change is refused.
RESUMABLE_CHANGES = {
    "output_dir", "resume_from_checkpoint", "max_steps", "num_train_epochs", "logging_steps", "eval_steps",
    "save_steps", "save_total_limit", "report_to", "push_to_hub", "hub_model_id", "dataloader_num_workers",
    "release_memory_steps", "per_device_eval_batch_size", "eval_file", "eval_dataset", "eval_split",
    "max_eval_samples", "max_bad_sample_fraction", "cpu", "gradient_checkpointing", "merge_lora",
}  # fmt: skip
# Options added after run arguments were first saved, with the value a checkpoint that lacks them was trained with.
ADDED_OPTIONS = {
    "max_train_minutes": None, "new_parameters_lr_multiplier": 1.0, "recipe": "paper", "global_token_init": None,
    "freeze_towers_ratio": 0.0, "temperature_init": None,
}  # fmt: skip


def check_resumed_arguments(checkpoint: Path, run_arguments: dict) -> list[str]:
    """Compare this run's options with those saved in `checkpoint`. A change that cannot apply raises a ValueError
    naming the option(s); the changes that apply are returned (to be logged). Checkpoints written before the options
    were saved are not checked."""
    saved_file = Path(checkpoint) / RUN_ARGUMENTS
    if not saved_file.exists():
        return []
    stored = json.loads(saved_file.read_text())
    saved = {**ADDED_OPTIONS, **stored}
    now = json.loads(json.dumps(run_arguments, default=str))  # the same normal form as the saved file
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    refused = [k for k in changed if k not in RESUMABLE_CHANGES]
    if refused:
        details = "; ".join(f"--{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in refused)
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: {details}. These cannot change in a resumed run (the weights, "
            "optimizer state, schedule and data order were made with the checkpoint's values): resume with them, or "
            "start a new run (from its weights with --model_name_or_path)."
            + (
                " A checkpoint written before --recipe existed was trained with the paper's: add --recipe paper."
                if "recipe" in refused and "recipe" not in stored
                else ""
            )
        )
    return [f"--{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed if k != "resume_from_checkpoint"]


class TrainerState:
    """Progress saved with every checkpoint (registered with `accelerator.register_for_checkpointing`)."""

    def __init__(self):
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.samples_seen = 0
        self.bad_samples = 0
        self.train_seconds = 0.0  # training time spent, for --max_train_minutes

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints, oldest first (an interrupted save leaves only a `.tmp` folder, which is ignored)."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted((p for p in folders if (p / "trainer_state.json").exists()), key=lambda p: int(p.name.split("-")[-1]))


def save_checkpoint(accelerator, output_dir, state: TrainerState, keep: int, run_arguments: dict | None = None) -> Path:
    """Write `checkpoint-<step>` atomically: save into a temporary folder, then rename. A crash mid-save leaves
    the previous checkpoint untouched; the oldest beyond `keep` are removed only after the new one is whole."""
    final = Path(output_dir) / f"checkpoint-{state.step}"
    partial = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "trainer_state.json").write_text(json.dumps(state.state_dict()))
        if run_arguments is not None:
            (partial / RUN_ARGUMENTS).write_text(json.dumps(run_arguments, indent=2, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(path: str | None, output_dir: str) -> Path | None:
    if not path:
        return None
    if path == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    if not (Path(path) / "trainer_state.json").exists():
        raise ValueError(f"--resume_from_checkpoint: {path!r} is not a complete checkpoint folder.")
    return Path(path)
