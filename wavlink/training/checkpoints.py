"""Checkpoints: the progress saved with each one, atomic writing, and finding the one to resume from."""

import json
import os
import shutil
from pathlib import Path


class TrainerState:
    """Progress saved with every checkpoint (registered with `accelerator.register_for_checkpointing`)."""

    def __init__(self):
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.samples_seen = 0
        self.bad_samples = 0

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints, oldest first (an interrupted save leaves only a `.tmp` folder, which is ignored)."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted((p for p in folders if (p / "trainer_state.json").exists()), key=lambda p: int(p.name.split("-")[-1]))


def save_checkpoint(accelerator, output_dir, state: TrainerState, keep: int) -> Path:
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
