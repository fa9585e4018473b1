"""Data-parallel THOR with torch.distributed: the digits cnn, each rank on its share of every batch.

    torchrun --nproc-per-node 2 examples/ddp_train.py [--plan PLAN] [--epochs 5] [--lr 0.1]

Runs on CPUs (gloo) and, unchanged, on GPUs (NCCL, one GPU per rank). The model is wrapped in
``DistributedDataParallel``; THOR averages its factors across the ranks and spreads the inversions
over them (see ``thor_planner.optim.distributed``). Rank 0 prints the loss and test accuracy per
epoch and, with ``--checkpoint FILE``, saves model and optimizer state there at the end.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from thor_planner import THOR, Plan
from thor_planner.inputs import models
from thor_planner.inputs.data import digits_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", help="a plan for the cnn (thor-plan profile --model cnn --data digits)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split across the ranks")
    parser.add_argument("--checkpoint", help="rank 0 saves {'model', 'optimizer'} here at the end")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the world size {world}")

    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = models.cnn(num_classes=10, in_channels=1).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    plan = Plan.load(args.plan) if args.plan else None
    opt = THOR(ddp, plan, lr=args.lr, momentum=0.9, weight_decay=5e-4, **({} if plan else {"split": 128}))

    x_train, y_train, x_test, y_test = (t.to(device) for t in digits_split(seed=0))
    local = args.batch_size // world
    gen = torch.Generator().manual_seed(0)  # the same shuffle on every rank
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=gen).to(device)
        ddp.train()
        total, seen = 0.0, 0
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            idx = order[start + rank * local: start + (rank + 1) * local]
            opt.zero_grad()
            loss = F.cross_entropy(ddp(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total, seen = total + loss.item(), seen + 1
        ddp.eval()
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        if rank == 0:
            print(f"epoch {epoch + 1}: train loss {total / seen:.4f}, test accuracy {accuracy:.4f}", flush=True)
    if rank == 0:
        print(f"THOR: {opt.stats()['step']} steps, {opt.stats()['skipped_steps']} skipped", flush=True)
        if args.checkpoint:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, args.checkpoint)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
