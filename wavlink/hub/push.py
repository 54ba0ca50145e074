"""Publishing: upload a saved WavLink folder (full model or LoRA adapter) to the Hub with a model card.

    wavlink-push runs/demo/final me/wavlink-demo
    wavlink-push runs/lora/final me/wavlink-base-lora      # a LoRA run's folder: the adapter on its own

The folder already holds what the Hub needs: safetensors weights, the processor, and the remote-code modules
(`configuration_wavlink.py`, `modeling_wavlink.py`, `processing_wavlink.py`, `pipeline_wavlink.py`). This adds the
README.md card (YAML metadata, usage, evaluation results recorded beside the model, limitations) and uploads.
"""

import argparse
import sys
from pathlib import Path

# Never uploaded: training leftovers and the merged copy inside a LoRA run's folder (push it separately).
IGNORE = ["merged/*", "checkpoint-*", "*.tmp", "*.bin", "*.pkl", "*.pt", "*.pth"]


def push_folder(
    folder,
    repo_id: str,
    private: bool = False,
    card: bool = True,
    token: str | None = None,
    commit_message: str = "Upload WavLink model",
    training: dict | None = None,
) -> str:
    """Upload `folder` to `repo_id` (created if needed) and return the commit URL. Weights must be safetensors."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").exists() and not (folder / "adapter_config.json").exists():
        raise ValueError(f"{folder} holds neither a model (config.json) nor a LoRA adapter (adapter_config.json).")
    if not list(folder.glob("*.safetensors")):
        raise ValueError(
            f"{folder} has no .safetensors weights; save with save_pretrained (safetensors is the default)."
        )
    if card:
        from .cards import write_model_card

        write_model_card(folder, repo_id, training=training)
    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    commit = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, commit_message=commit_message, ignore_patterns=IGNORE
    )
    return commit.commit_url


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wavlink-push", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a saved WavLink folder (e.g. runs/NAME/final)")
    parser.add_argument("repo_id", help="Hub repository, owner/name")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--no_card", action="store_true", help="do not write or update README.md")
    args = parser.parse_args(argv)
    try:
        url = push_folder(args.folder, args.repo_id, private=args.private, card=not args.no_card)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"pushed {args.folder} to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
