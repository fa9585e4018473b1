"""THOR on a model sharded with FSDP2: the digits cnn, each rank holding a band of every weight's rows.

    torchrun --nproc-per-node 2 examples/fsdp_train.py [--plan PLAN] [--epochs 5] [--lr 0.1]
        [--checkpoint DIR] [--resume DIR]

Runs on CPUs (gloo) and, unchanged, on GPUs (NCCL, one GPU per rank). Every Conv2d / Linear and then
the whole model are sharded with ``torch.distributed.fsdp.fully_shard``; THOR preconditions each
rank's rows with the G blocks of those rows and the whole A (see ``thor_planner.optim.sharded``), so
no gradient is gathered. A plan must tile the shards: make it with
``thor-plan profile --model cnn --data digits --fsdp N`` for N ranks (without ``--plan`` every
factor is split at 128, G at the largest split that tiles). The 10-class head has too few rows for
many ranks (from 6 ranks on, some hold none): THOR then gathers its rows, the documented fallback.

``--checkpoint DIR`` saves model and optimizer with ``torch.distributed.checkpoint`` at the end (each
rank writes its shards); ``--resume DIR`` loads them first, on as many ranks as saved them.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard

from thor_planner import THOR, Plan
from thor_planner.inputs import models
from thor_planner.inputs.data import digits_split


def sharded_cnn(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank (each keeps its own shards of them)
    model = models.cnn(num_classes=10, in_channels=1).to(device)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        fully_shard(getattr(model, name))
    fully_shard(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", help="a plan for the cnn made with --fsdp N (thor-plan profile --model cnn --data digits)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split across the ranks")
    parser.add_argument("--checkpoint", help="save model and optimizer here at the end (torch.distributed.checkpoint)")
    parser.add_argument("--resume", help="load model and optimizer from here first")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the world size {world}")

    model = sharded_cnn(device)
    plan = Plan.load(args.plan) if args.plan else None
    opt = THOR(model, plan, lr=args.lr, momentum=0.9, weight_decay=5e-4, **({} if plan else {"split": 128}))
    if args.resume:
        dcp.load({"model": model, "optim": opt}, checkpoint_id=args.resume)

    x_train, y_train, x_test, y_test = (t.to(device) for t in digits_split(seed=0))
    local = args.batch_size // world
    gen = torch.Generator().manual_seed(0)  # the same shuffle on every rank
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=gen).to(device)
        model.train()
        total, seen = 0.0, 0
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            idx = order[start + rank * local: start + (rank + 1) * local]
            opt.zero_grad()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total, seen = total + loss.item(), seen + 1
        model.eval()
        with torch.no_grad():  # every rank runs the whole test set (FSDP gathers the weights for it)
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        if rank == 0:
            print(f"epoch {epoch + 1}: train loss {total / seen:.4f}, test accuracy {accuracy:.4f}", flush=True)
    if rank == 0:
        print(f"THOR: {opt.stats()['step']} steps, {opt.stats()['skipped_steps']} skipped", flush=True)
    if args.checkpoint:
        dcp.save({"model": model, "optim": opt}, checkpoint_id=args.checkpoint)
    dist.barrier()  # every rank done before any leaves the group
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
