"""Multi-GPU strategies with the settings this model wants, usable by class path from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from lighthouse.checkpoint.io import check_sharded_checkpoint, load_verified
from lighthouse.model.context_parallel import (
    CP_FIELD,
    ContextParallelGroup,
    check_degree,
    check_divisible,
    set_context_parallel,
)
from lighthouse.model.transformer import Block


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


class ContextParallelStrategy(DDPStrategy):
    """Data parallel x context parallel on a 2-D device mesh ``(data_parallel, context_parallel)``: each sequence
    is split over ``context_parallel_size`` consecutive ranks, heads are exchanged around every attention layer
    (lighthouse/model/context_parallel.py), and the ``world / context_parallel_size`` groups read different windows.

    Why DDP and not Lightning's ModelParallelStrategy: parameters are replicated over the whole mesh, so what the
    gradient needs is exactly DDP's average over all ranks (each rank's loss is its slice's mean, the slices are
    equal, so the average of the gradients is the one-process gradient of the global batch). ModelParallelStrategy
    reduces nothing by itself (it expects FSDP2/DTensor applied in ``configure_model``) and saves full checkpoints
    through torch.distributed.checkpoint's state-dict helpers, outside the checksummed CheckpointIO this project
    writes every checkpoint with; with DDP a checkpoint is the same file at every cp and dp, written the same way,
    so resuming at another cp needs nothing. Sharding parameters over the data-parallel dimension (FSDP2 on the
    flattened dp x cp mesh, as torchtitan does) is the next step for models whose weights do not fit replicated.

    Rank ``d * cp + c`` is slice ``c`` of data-parallel replica ``d``: a CP group is consecutive ranks, i.e. GPUs
    of one node on NVLink, where the all-to-alls run.
    """

    def __init__(self, context_parallel_size: int = 1, **kwargs):
        """
        Args:
            context_parallel_size: Ranks that share one sequence (cp). It must divide the number of processes,
                model.arch.n_heads, model.arch.n_kv_heads and data.seq_len; data.batch_size stays per
                data-parallel replica (the global batch is batch_size * world / cp windows). 1: plain DDP.
            **kwargs: Lightning's DDPStrategy arguments.
        """
        check_degree(context_parallel_size)
        super().__init__(**kwargs)
        self.context_parallel_size = context_parallel_size
        self.device_mesh = None

    @property
    def data_parallel_size(self) -> int:
        return self.num_nodes * self.num_processes // self.context_parallel_size

    @property
    def distributed_sampler_kwargs(self) -> dict:
        # Every rank of a CP group reads the same windows: data is split over the data-parallel dimension only.
        return {"num_replicas": self.data_parallel_size, "rank": self.global_rank // self.context_parallel_size}

    def check_sizes(self, config, world_size: int) -> None:
        """Refuse a cp the run cannot use (before any process group or step): the world and the model's heads
        and sequence must split into cp equal parts."""
        cp = self.context_parallel_size
        if world_size % cp:
            valid = [d for d in range(1, world_size + 1) if world_size % d == 0]
            raise ValueError(
                f"{CP_FIELD}={cp} must divide the number of processes ({world_size} = trainer.num_nodes x "
                f"trainer.devices): valid values are {valid}"
            )
        check_divisible(config.n_heads, config.n_kv_heads, config.seq_len, cp)

    def setup_distributed(self) -> None:
        super().setup_distributed()
        from torch.distributed.device_mesh import init_device_mesh

        cp = self.context_parallel_size
        self.check_sizes(self.lightning_module.config, self.world_size)
        self.device_mesh = init_device_mesh(
            self.root_device.type, (self.world_size // cp, cp), mesh_dim_names=("data_parallel", "context_parallel")
        )

    def setup(self, trainer) -> None:
        # Before DDP wraps the module: from here on the Transformer expects sequence slices.
        group = ContextParallelGroup.of(self.device_mesh.get_group("context_parallel"))
        set_context_parallel(self.lightning_module.model, group)
        super().setup(trainer)
