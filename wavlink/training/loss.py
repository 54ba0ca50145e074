"""The contrastive loss across processes, configured once (open_clip style) and called with the model's outputs.

Each process scores its own rows against the embeddings of every process, gathered with autograd, so averaging the
per-process losses (as DDP averages gradients) gives the gradient of one process holding the global batch. This
process's rows start at `rank * local_batch` in the gathered batch: the labels are offset there, in
`matryoshka_contrastive_loss`.
"""

import torch

from modeling_wavlink import matryoshka_contrastive_loss


def gather_with_grad(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """All-gather along the batch that carries gradients back to every process (`accelerator.gather` does not)."""
    if world_size == 1:
        return tensor
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(tensor.contiguous()), dim=0)


class DistributedContrastiveLoss:
    """CLIP or SigLIP loss over Matryoshka prefixes, on embeddings gathered from `world_size` processes.

    Args:
        loss_type: `"clip"` or `"siglip"`.
        matryoshka_dims: the nested prefix sizes the loss averages over.
        rank, world_size: this process and the number of processes (1 for a single process).
    """

    def __init__(self, loss_type: str, matryoshka_dims, rank: int = 0, world_size: int = 1):
        self.loss_type, self.matryoshka_dims = loss_type, list(matryoshka_dims)
        self.rank, self.world_size = rank, world_size

    def __call__(self, outputs) -> torch.Tensor:
        """`outputs` is a `WavLinkOutput` of this process's `(n, d)` pairs; returns this process's share of the loss."""
        audio, text = outputs.audio_embeds.float(), outputs.text_embeds.float()
        gathered = self.world_size > 1
        return matryoshka_contrastive_loss(
            audio,
            text,
            logit_scale=outputs.logit_scale.float(),
            logit_bias=None if outputs.logit_bias is None else outputs.logit_bias.float(),
            loss_type=self.loss_type,
            matryoshka_dims=self.matryoshka_dims,
            all_audio_embeds=gather_with_grad(audio, self.world_size) if gathered else None,
            all_text_embeds=gather_with_grad(text, self.world_size) if gathered else None,
            offset=self.rank * audio.shape[0],
        )
