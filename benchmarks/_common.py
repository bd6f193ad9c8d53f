"""What every benchmark reports about the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine(**extra) -> dict:
    """CPU model, cores, memory and library versions, plus `extra` fields."""
    import ray
    import torch

    def first(path: str, key: str, parse, default):
        p = Path(path)
        if not p.exists():
            return default
        return next((parse(line) for line in p.read_text().splitlines() if line.startswith(key)), default)

    return {
        "cpu": first("/proc/cpuinfo", "model name", lambda ln: ln.split(":", 1)[1].strip(), platform.processor()),
        "cores": os.cpu_count(),
        "memory_mib": first("/proc/meminfo", "MemTotal", lambda ln: int(ln.split()[1]) // 1024, 0),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        **extra,
    }


def actor_threads(cpus: float) -> int:
    """torch threads in a Ray actor reserving `cpus` CPUs (what a Train worker or Serve replica that size gets)."""
    import ray

    @ray.remote(num_cpus=cpus)
    class Probe:
        def threads(self) -> int:
            import torch

            return torch.get_num_threads()

    probe = Probe.remote()
    n = ray.get(probe.threads.remote())
    ray.kill(probe)
    return n
