"""Small timing helpers shared by the benchmark scripts (not part of the library).

The development machine has 2 shared, noisy CPU cores (10-40x swings have been seen), so every figure is
reported as the median *and* the minimum of several repeats, and the calls being compared are timed
round-robin (one repeat of each in turn) so that a burst of load hits all of them alike.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

__all__ = ["Timing", "time_round_robin", "machine_info", "code_version", "cuda_sync", "benchmark_parser",
           "print_run_header", "write_output"]


@dataclass
class Timing:
    """Wall-clock seconds of each timed repeat of one call (warm-up excluded)."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def repeats(self) -> int:
        return len(self.times)


def cuda_sync(device: torch.device | str) -> Callable[[], None]:
    """A no-op on CPU; ``torch.cuda.synchronize`` on a CUDA device (kernels run asynchronously)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_round_robin(calls: Mapping[str, Callable[[], Any]], repeats: Mapping[str, int], *, warmup: int = 1,
                     sync: Callable[[], None] = lambda: None) -> dict[str, Timing]:
    """Times each call ``repeats[name]`` times with ``time.perf_counter``, after ``warmup`` untimed calls.

    Repeats are interleaved: round r times every call that still has a repeat left, in order. The
    warm-up absorbs one-off costs (lazy initialisation, an estimator's first-call fall-backs).
    """
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        sync()
    timings = {name: Timing() for name in calls}
    for r in range(max(repeats[name] for name in calls)):
        for name, call in calls.items():
            if r >= repeats[name]:
                continue
            sync()
            start = time.perf_counter()
            call()
            sync()
            timings[name].times.append(time.perf_counter() - start)
    return timings


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_version(repo: str | os.PathLike) -> dict[str, Any]:
    """The git commit of ``repo`` and whether its working tree had changes, untracked files included (``None``
    without git)."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain")  # untracked files count: a new benchmark script is a change
    return {"git_commit": git("rev-parse", "--short", "HEAD"), "git_dirty": None if status is None else bool(status)}


def machine_info() -> dict[str, Any]:
    """Where and when a benchmark ran: platform, CPU, torch and its threads, CUDA device, load, date."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average_1_5_15min"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    return info


def benchmark_parser(doc: str, default_out: Path, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark script has: ``--quick`` (the tiny run the tests make) and ``--out`` (JSON)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=default_out, help=f"JSON output (default {default_out})")
    return parser


def print_run_header(command: str, code: Mapping[str, Any], machine: Mapping[str, Any], seeds: str,
                     libraries: tuple[str, ...] = ("diffusers",)) -> None:
    """Prints where a benchmark ran: the command and commit, the date and seeds, and the machine line."""
    dirty = ", with local changes" if code["git_dirty"] else ""
    versions = "".join(f"; {name} {machine.get(name)}" for name in libraries)
    print(f"command: {command}    (git {code['git_commit']}{dirty})")
    print(f"date:    {machine['date']}    {seeds}")
    print(f"machine: {machine['platform']}; CPU {machine['cpu_model']} ({machine['logical_cpus']} logical); "
          f"torch {machine['torch']} with {machine['torch_threads']} thread(s), OMP_NUM_THREADS="
          f"{machine['OMP_NUM_THREADS']}{versions}; load average {machine.get('load_average_1_5_15min')}; "
          f"CUDA: {machine['cuda_device'] or 'none'}", flush=True)


def write_output(doc: dict, path: os.PathLike | str, started: float) -> None:
    """Writes a benchmark's JSON atomically, with ``elapsed_s`` since ``started`` (a ``perf_counter`` time)."""
    from mmh_train.io import write_text_atomic

    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_text_atomic(Path(path), json.dumps(doc, indent=1, default=_jsonable) + "\n")
    print(f"\nwrote {path} ({doc['elapsed_s']:.0f} s)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
