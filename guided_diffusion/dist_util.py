"""Process-group setup for mpiexec, torchrun or a single process, and the helpers every script shares.

Launchers are detected from their environment variables: Open MPI (OMPI_COMM_WORLD_*), MPICH / Intel MPI
(PMI_*), torchrun (TORCHELASTIC_RUN_ID / RANK + WORLD_SIZE), else a single process. mpi4py is imported only
under an MPI launcher. The backend is nccl on GPUs and gloo on CPUs; each process uses the GPU of its local rank.
"""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist

from . import logger
from guided_diffusion.loading.checkpoint import load_state_dict as _read_state_dict
from guided_diffusion.loading.checkpoint import read_bytes, state_dict_from_bytes
from guided_diffusion.cli.fileio import remove_stale_temporaries

# Collectives wait at most this long for a peer, so a dead rank ends the run instead of hanging it.
DEFAULT_TIMEOUT_S = int(os.environ.get("GUIDED_DIFFUSION_DIST_TIMEOUT", "600"))
_CHUNK = 1 << 28  # broadcast large files in 256 MiB pieces


def launcher() -> str:
    """'mpi', 'torchrun' or 'single', from the environment of this process."""
    env = os.environ
    if "OMPI_COMM_WORLD_SIZE" in env or "PMI_SIZE" in env or "PMIX_RANK" in env:
        return "mpi"
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env):
        return "torchrun"
    return "single"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _mpi_environment() -> None:
    """Export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from MPI, for env:// initialization."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    if comm.Get_rank() == 0:
        address = os.environ.get("MASTER_ADDR") or _host_address()
        port = int(os.environ.get("MASTER_PORT") or _free_port())
    else:
        address, port = None, None
    address, port = comm.bcast((address, port), root=0)
    os.environ.update(RANK=str(comm.Get_rank()), WORLD_SIZE=str(comm.Get_size()), LOCAL_RANK=str(local_rank),
                      MASTER_ADDR=address, MASTER_PORT=str(port))


def _host_address() -> str:
    try:
        return socket.gethostbyname(socket.getfqdn())
    except OSError:
        return "127.0.0.1"


def setup_dist(backend: str | None = None, timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
    """Initialize the default process group for whichever launcher started this process (idempotent)."""
    if dist.is_initialized():
        return
    kind = launcher()
    if kind == "mpi":
        _mpi_environment()
    elif kind == "single":
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(dev())
    dist.init_process_group(backend=backend, init_method="env://",
                            timeout=datetime.timedelta(seconds=timeout_s))


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def dev() -> torch.device:
    """This process's device: the GPU of its local rank, or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def _comm_device() -> torch.device:
    return dev() if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_bytes(data: bytes | None) -> bytes:
    """Rank 0's bytes on every rank (others pass None)."""
    if get_world_size() == 1:
        return data
    device = _comm_device()
    length = torch.tensor([len(data) if get_rank() == 0 else 0], dtype=torch.int64, device=device)
    dist.broadcast(length, 0)
    n = int(length.item())
    if get_rank() == 0:
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buffer = torch.empty(n, dtype=torch.uint8, device=device)
    for start in range(0, n, _CHUNK):
        dist.broadcast(buffer[start:start + _CHUNK], 0)
    return data if get_rank() == 0 else bytes(buffer.cpu().numpy())


def load_state_dict(path: str, **_ignored) -> dict:
    """Read a checkpoint once (on rank 0) and share it with every rank, on the CPU (map_location is ignored)."""
    if get_world_size() == 1:
        return _read_state_dict(path)
    data, error = None, None
    if get_rank() == 0:
        try:
            data = read_bytes(path)
        except OSError as e:
            error = str(e)
    error = broadcast_object(error)
    if error:
        raise FileNotFoundError(error)
    return state_dict_from_bytes(broadcast_bytes(data), path)


def broadcast_object(obj):
    """Rank 0's picklable object on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    """obj from every rank, in rank order ([obj] without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_params(params) -> None:
    """Copy rank 0's values of the given tensors to every rank."""
    if get_world_size() == 1:
        return
    device = _comm_device()
    for p in params:
        with torch.no_grad():
            buf = p.detach().to(device)
            dist.broadcast(buf, 0)
            p.copy_(buf.to(p.device))


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Tear the process group down (call at the end of a script)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def clear_interrupted_writes(folder: str) -> None:
    """On starting or resuming a run in `folder`: the first process deletes the temporary files of writes that
    were killed midway (fileio.remove_stale_temporaries), then every process waits for it, so none writes before."""
    if get_rank() == 0:
        for path in remove_stale_temporaries(folder):
            logger.log(f"removed {path}, left by an interrupted write")
    barrier()
