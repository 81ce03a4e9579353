"""Write a real verl checkpoint tree with verl's own FSDPCheckpointManager (gloo, CPU).

Run as a script (it starts its own process group): python verl_tree_writer.py ROOT BASE_DIR
--steps 1 2 --world-size 1 [--no-hf-model] [--fsdp2]. Each step takes one AdamW step on random tokens,
then saves `ROOT/global_step_N/actor/` and updates latest_checkpointed_iteration.txt, exactly
as verl's trainer does. Prints one JSON line: {"values": FILE} where FILE (torch.save'd, plain
tensors) holds the full fp32 parameters after each step, for exact comparisons.
"""

import argparse
import json
import os
import sys
from pathlib import Path


def worker(rank, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port), RANK=str(rank),
                      WORLD_SIZE=str(args.world_size), LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from transformers import AutoTokenizer, Qwen2ForCausalLM
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    dist.init_process_group("gloo", rank=rank, world_size=args.world_size)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    if args.fsdp2:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        fm = fully_shard(model, mesh=init_device_mesh("cpu", (args.world_size,)))
    else:
        fm = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True,
                  sharding_strategy=ShardingStrategy.FULL_SHARD if args.world_size > 1 else ShardingStrategy.NO_SHARD)
    opt = torch.optim.AdamW(fm.parameters(), lr=1e-2)
    contents = ["model", "optimizer", "extra"] + ([] if args.no_hf_model else ["hf_model"])
    mgr = FSDPCheckpointManager(fm, opt, None, processing_class=AutoTokenizer.from_pretrained(args.base),
                                checkpoint_config=OmegaConf.create({"save_contents": contents,
                                                                    "load_contents": ["model"]}))
    root = Path(args.root)
    values = {}
    vocab = model.config.vocab_size
    for step in args.steps:
        g = torch.Generator().manual_seed(step)
        ids = torch.randint(0, vocab, (2, 8), generator=g)
        fm(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        mgr.save_checkpoint(str(root / f"global_step_{step}" / "actor"), global_step=step)
        if args.fsdp2:
            values[step] = {k: v.full_tensor().detach().clone() for k, v in fm.state_dict().items()}
        else:
            with FSDP.summon_full_params(fm):
                values[step] = {k: v.detach().clone() for k, v in fm.module.state_dict().items()}
        if rank == 0:
            (root / "latest_checkpointed_iteration.txt").write_text(str(step))
    if rank == 0:
        torch.save(values, root.parent / "verl_values.pt")
        print(json.dumps({"values": str(root.parent / "verl_values.pt")}))
    dist.barrier()
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("base")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--world-size", type=int, default=1)
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--no-hf-model", action="store_true")
    ap.add_argument("--fsdp2", action="store_true", help="torch's fully_shard (DTensor shards) instead of FSDP1")
    args = ap.parse_args()
    if args.world_size == 1:
        worker(0, args)
    else:
        import torch.multiprocessing as mp

        mp.spawn(worker, args=(args,), nprocs=args.world_size)


if __name__ == "__main__":
    sys.exit(main())
