"""Masks hold under DistributedDataParallel (two CPU processes on gloo) and torch.compile."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import prunekit as pk


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _net()
        masks = pk.prune(model, 0.7)
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        gen = torch.Generator().manual_seed(rank)  # each rank sees different data
        for _ in range(20):
            x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        weights = {n: pk.effective_weight(model, n).detach() for n in masks}
        torch.save({"weights": weights, "masks": dict(masks)}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_masks_hold_under_ddp(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, mask in r0["masks"].items():
        assert bool((r0["weights"][name][~mask] == 0).all())
        assert torch.equal(r0["weights"][name], r1["weights"][name])  # replicas stayed in sync


def test_masks_hold_under_torch_compile():
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:
        pytest.skip("torch.compile unavailable")
    model = _net()
    masks = pk.prune(model, 0.6)
    compiled = torch.compile(model, backend="eager")  # the eager backend needs no C compiler
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(compiled(x), y).backward()
        opt.step()
    for name, mask in masks.items():
        assert bool((pk.effective_weight(model, name)[~mask] == 0).all())
    assert torch.allclose(compiled(x), model(x))
