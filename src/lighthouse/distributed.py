"""Multi-GPU strategies with the settings this model wants, usable by class path from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lightning.pytorch.strategies import FSDPStrategy

from lighthouse.checkpoint_io import check_sharded_checkpoint, load_verified
from lighthouse.model import Block


class BlockFSDP(FSDPStrategy):
    """FSDP that shards each transformer block separately (one all-gather per block, as in torchtitan).

    Mixed precision follows ``trainer.precision`` (bf16-mixed: bf16 compute and gradient reduction, fp32
    master weights). Sharded checkpoints are folders written by every rank in parallel; turn one into a
    single ``.ckpt`` with ``python -m lightning.pytorch.utilities.consolidate_checkpoint <folder>``.
    """

    def __init__(
        self,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD",
        state_dict_type: Literal["full", "sharded"] = "sharded",
        checkpoint_blocks: bool = False,
        **kwargs,
    ):
        """
        Args:
            sharding_strategy: What FSDP shards: parameters, gradients and optimizer state (FULL_SHARD) or only
                gradients and optimizer state (SHARD_GRAD_OP), within a node only (HYBRID_SHARD), or nothing.
            state_dict_type: 'sharded' (each rank writes its shard; fast, resumable at another world size) or
                'full' (rank 0 writes one file).
            checkpoint_blocks: Recompute each block in the backward pass (FSDP's own activation checkpointing);
                leave ``model.activation_checkpointing`` off when this is on.
        """
        super().__init__(
            auto_wrap_policy={Block},
            activation_checkpointing_policy={Block} if checkpoint_blocks else None,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            **kwargs,
        )

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None):
        # Lightning's FSDP loader unpickles a single-file checkpoint with a plain Unpickler, and torch's sharded
        # reader its .metadata with pickle.load: either would run code from the file. Check first, the safe way.
        weights_only = True if weights_only is None else weights_only
        if weights_only and Path(checkpoint_path).is_dir():
            check_sharded_checkpoint(checkpoint_path)
        elif weights_only:
            load_verified(checkpoint_path, map_location="cpu", mmap=True)  # tensors mapped, not read
        return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
