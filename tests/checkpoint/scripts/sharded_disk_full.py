"""A sharded (FSDP) save past the file-size limit on 2 processes; prints one result line per rank.

Every rank sets ``RLIMIT_FSIZE`` after a first save that fits, so each rank's DCP write fails with EFBIG,
then reports what it caught and what the path holds afterwards.
"""

from __future__ import annotations

import resource
import signal
import sys

import torch

from fabric import Fabric


def main() -> None:
    path = sys.argv[1]
    fabric = Fabric(accelerator="cpu", devices=2, strategy="fsdp")
    fabric.launch()
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Linear(128, 4))
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters()))
    fabric.backward(model(torch.ones(2, 128)).sum())
    optimizer.step()
    fabric.save(path, {"model": model, "optimizer": optimizer, "step": 1})

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    caught = "nothing"
    try:
        fabric.save(path, {"model": model, "optimizer": optimizer, "step": 2})
    except Exception as error:  # what a user's `except Exception` sees
        caught = f"{type(error).__name__} errno={getattr(error, 'errno', None)}"
    except BaseException as error:  # torch's CheckpointException derives from BaseException only
        caught = f"BaseException {type(error).__name__}"
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    state = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.load(path, state)
    # one write: the ranks share an unbuffered stdout, where print's text and newline are two writes
    sys.stdout.write(f"RESULT rank={fabric.global_rank} caught={caught} step={state['step']};\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
