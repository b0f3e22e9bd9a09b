"""A worker for tests/test_train.py's --max-minutes test: two gloo ranks whose clocks disagree ask
train.train.out_of_time and write what each was told."""
import json
import os
import sys
import time

import torch.distributed as dist

from train.train import Runtime, out_of_time

if __name__ == "__main__":
    rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    started = time.time() - (3600 if rank == 0 else 0)  # rank 0 has run an hour, rank 1 just started
    answer = out_of_time(started, 30, Runtime(rank, 2))
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump(answer, handle)
    dist.destroy_process_group()
