"""Data-parallel equivalence: 2 gloo processes on shards == 1 process on the combined batch."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.data.base import Batch
from gaal_cli.foundation.distributed import TorchComm, attach, attach_optimizer
from gaal_cli.training.engine import build_optimizer, create_method

STEPS = 3


def build(tiny, method_name):
    config = load_config(overrides=[*tiny, f"method={method_name}", "methods.gaal.epsilon=0.05"])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    batch = next(iter(make_loader(data.train, 32, shuffle=True, seed=0)))
    method = create_method(config, data)
    method.train()
    # gloo has no SyncBatchNorm: freeze BatchNorm statistics so both set-ups normalise alike
    for module in method.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    optimizer, _ = build_optimizer(method, config.train)
    return method, optimizer, batch


def worker(rank, world, init_file, tiny, method_name, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    method, optimizer, batch = build(tiny, method_name)
    comm = TorchComm()
    attach(method, comm, torch.device("cpu"))
    attach_optimizer(optimizer, comm)
    per = len(batch.label) // world
    shard = Batch(*(t[rank * per : (rank + 1) * per] for t in batch))
    for _ in range(STEPS):
        method.train_step(shard, optimizer)
    if rank == 0:
        torch.save(method.state_dict(), out)
    dist.destroy_process_group()


@pytest.mark.parametrize("method_name", ["gaal", "concat"])
def test_two_processes_match_one_on_the_combined_batch(tmp_path, tiny, method_name):
    out = tmp_path / "rank0.pt"
    mp.spawn(worker, args=(2, str(tmp_path / "init"), tiny, method_name, str(out)), nprocs=2, join=True)
    distributed = torch.load(out)

    method, optimizer, batch = build(tiny, method_name)
    for _ in range(STEPS):
        method.train_step(batch, optimizer)
    single = method.state_dict()
    for name, value in single.items():
        assert torch.allclose(distributed[name].float(), value.float(), atol=2e-5, rtol=1e-4), name
    # and the run really moved away from the initial weights
    initial = build(tiny, method_name)[0].state_dict()
    assert not torch.allclose(single["head.weight"], initial["head.weight"])
