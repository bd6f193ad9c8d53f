"""What every benchmark reports about the machine it ran on: the machine, its load, our processes' memory."""

from __future__ import annotations

import os
import platform
import threading
import time
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


# ------------------------------------------------------------------------------------- a busy machine, memory
# Other people's tests share this machine: every benchmark prints the load average before and after it, and what
# share of the CPU others used while it ran, so a figure taken on a busy machine is never mistaken for a quiet one.
BUSY_LOAD_PER_CORE = 0.5  # 1-minute load before we start, per core, above which others were already running
BUSY_OTHERS_SHARE = 0.25  # share of all cores' time used by processes not ours during the run


def parse_pss(rollup: str) -> int | None:
    """Bytes of proportional set size in a /proc/PID/smaps_rollup text (shared pages split among their users)."""
    for line in rollup.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


def parse_stat(line: str) -> tuple[int, int]:
    """(parent pid, CPU ticks used: utime + stime) from a /proc/PID/stat line."""
    # The command name is in parentheses and may itself hold spaces and parentheses: split after the last ')'.
    rest = line[line.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # the process ended, or is not ours to read
        return None


def _stats() -> dict[int, tuple[int, int]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (text := _read(f"/proc/{name}/stat")):
            out[int(name)] = parse_stat(text)
    return out


def descendants(root: int, stats: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """``root`` and every process below it (a local Ray's GCS, raylet and workers are below the driver)."""
    stats = _stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def busy_reasons(load_before: tuple[float, float, float], others_share: float | None, cores: int) -> list[str]:
    """Why a run on this machine cannot be trusted (empty: it can): others' load before, others' CPU during."""
    reasons = []
    if load_before[0] > BUSY_LOAD_PER_CORE * cores:
        reasons.append(f"1-minute load {load_before[0]:.2f} before the run on {cores} cores")
    if others_share is not None and others_share > BUSY_OTHERS_SHARE:
        reasons.append(f"other processes used {others_share:.0%} of the CPU during the run")
    return reasons


def _machine_busy_ticks() -> int | None:
    text = _read("/proc/stat")
    if not text:
        return None
    f = [int(v) for v in text.splitlines()[0].split()[1:]]
    return sum(f[:3]) + sum(f[5:8])  # user nice system + irq softirq steal (not idle, iowait)


class Watch(threading.Thread):
    """While a benchmark runs: peak PSS of this process and its descendants, and the CPU others used.

    PSS (from /proc/PID/smaps_rollup) counts a page shared by N processes as 1/N in each, so the sum over Ray's
    driver, GCS, raylet and workers counts the object store and shared libraries once, where summed RSS counted
    them once per process. ``with Watch() as w: ...`` then ``w.report()``.
    """

    def __init__(self, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.interval_s, self.peak_pss = interval_s, 0
        self._halt = threading.Event()
        self._ours: dict[int, int] = {}  # pid -> CPU ticks last seen (a process that ended keeps its last count)

    def __enter__(self) -> Watch:
        self.load_before = os.getloadavg()
        self._t0, self._busy0 = time.monotonic(), _machine_busy_ticks()
        self._ours0 = dict(self._sample())
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join()
        self._sample()
        self.elapsed_s, self._busy1 = time.monotonic() - self._t0, _machine_busy_ticks()
        self.load_after = os.getloadavg()

    def _sample(self) -> dict[int, int]:
        stats = _stats()
        tree = descendants(os.getpid(), stats)
        total = 0
        for pid in tree:
            self._ours[pid] = stats[pid][1]
            total += parse_pss(_read(f"/proc/{pid}/smaps_rollup") or "") or 0
        self.peak_pss = max(self.peak_pss, total)
        return {pid: stats[pid][1] for pid in tree}

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self._sample()

    def our_cpu_s(self) -> float:
        """CPU seconds used by this process and its descendants while the watch ran (less noisy than wall time)."""
        return sum(t - self._ours0.get(pid, 0) for pid, t in self._ours.items()) / os.sysconf("SC_CLK_TCK")

    def others_share(self) -> float | None:
        """Share of all cores' time used by processes not below this one while the watch ran."""
        if self._busy0 is None or self._busy1 is None or self.elapsed_s <= 0:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        capacity = self.elapsed_s * tick * (os.cpu_count() or 1)
        return max(0.0, (self._busy1 - self._busy0 - self.our_cpu_s() * tick) / capacity)

    def report(self) -> dict:
        """Load averages, others' CPU share, the busy verdict and peak PSS, as a benchmark's JSON records them."""
        share = self.others_share()
        share = None if share is None else round(share, 3)
        reasons = busy_reasons(self.load_before, share, os.cpu_count() or 1)
        return {"load_before": [round(v, 2) for v in self.load_before],
                "load_after": [round(v, 2) for v in self.load_after],
                "others_cpu_share": share,
                "busy": reasons, "our_cpu_s": round(self.our_cpu_s(), 2), "peak_pss_bytes": self.peak_pss}


def print_load(report: dict) -> None:
    """The lines every benchmark prints about the machine's load, and its verdict."""
    fmt = lambda v: " ".join(f"{x:.2f}" for x in v)  # noqa: E731
    share = report["others_cpu_share"]
    print(f"load average (1, 5, 15 min): before {fmt(report['load_before'])}, after {fmt(report['load_after'])}; "
          f"others' CPU during the run: {'unknown' if share is None else f'{share:.0%}'}")
    if report["busy"]:
        print("MACHINE TOO BUSY TO TRUST these figures: " + "; ".join(report["busy"]) + ". Rerun on a quiet machine.")
    else:
        print("machine quiet enough: figures can be trusted")
