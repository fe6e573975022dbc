"""kill -9 at a random moment, then resume from "latest": how many runs end complete, and as the uninterrupted one.

    python benchmarks/kill_resume.py --tries 20                  # the toy recipe (recipes/toy.py), small config
    python benchmarks/kill_resume.py --recipe port --tries 10    # the diffusers port (recipes/train_unconditional.py)
    python benchmarks/kill_resume.py --quick                     # 1 try on a tiny toy config (the test runs this)

First one uninterrupted reference run, timed (wall time T, start-up included). Then each try starts the recipe
in its own process in a fresh folder, sends it SIGKILL after a uniformly random time in [0, T] (seeded), and
runs it again with resume from the latest checkpoint (``train.resume=latest`` for the toy,
``--resume_from_checkpoint latest`` for the port) to the end. A try is *complete* when that second run exits 0
with its report (``report.md``), its audit table and its last checkpoint; *same as uninterrupted* when its audit
table and final weights equal the reference run's bit for bit. Where the kill landed is read from the folder:
before the first checkpoint, while a checkpoint was being written (a ``.partial`` folder, or a checkpoint file
that cannot be read), between checkpoints, or after training (the report already there).
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _timing import benchmark_parser, code_version, machine_info, print_run_header, write_output

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TOY = ["train.steps=400", "monitor.every_n_steps=100", "train.checkpoint_every=50", "train.progress_bar=false",
       "remedies.compare=false", "train.logger=csv"]
TOY_QUICK = ["train.steps=40", "monitor.every_n_steps=20", "train.checkpoint_every=20", "data.n_train=16",
             "train.n_samples=32", "train.sample_steps=4", "train.progress_bar=false", "remedies.compare=false",
             "train.logger=csv"]
PORT = ["--max_train_samples", "48", "--resolution", "8", "--train_batch_size", "8", "--num_epochs", "2",
        "--gradient_accumulation_steps", "2", "--use_ema", "--checkpointing_steps", "2"]  # checkpoint-4: mid-epoch


def command(recipe: str, out: Path, *, quick: bool, resume: bool) -> list[str]:
    if recipe == "toy":
        return [sys.executable, str(REPO / "recipes" / "toy.py"), f"out_dir={out}", *(TOY_QUICK if quick else TOY),
                *(["train.resume=latest"] if resume else [])]
    return [sys.executable, str(REPO / "recipes" / "train_unconditional.py"), "--output_dir", str(out), *PORT,
            *(["--resume_from_checkpoint", "latest"] if resume else [])]


def _readable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:
        return False


def _toy_checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = []
    for path in out.glob("*/checkpoints/*.ckpt"):
        step = path.name.split("step=")[-1].split(".")[0].split("-")[0] if "step=" in path.name else ""
        if step.isdigit():
            found.append((int(step), path))
    return sorted(found)


def final_state(recipe: str, out: Path) -> dict[str, Any]:
    """What a finished run left: its audit table's text and its final weights (None where missing)."""
    if recipe == "toy":
        audits = sorted(out.glob("*/mmh_audit.csv"))
        readable = [p for _, p in _toy_checkpoints(out) if _readable(p)]
        weights = torch.load(readable[-1], map_location="cpu", weights_only=False)["state_dict"] if readable else None
        last = _toy_checkpoints(out)[-1][0] if readable else None
    else:
        from safetensors.torch import load_file

        audits = [out / "mmh_audit.csv"] if (out / "mmh_audit.csv").is_file() else []
        unet = out / "unet" / "diffusion_pytorch_model.safetensors"
        weights = load_file(str(unet)) if unet.is_file() else None
        steps = [int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
        last = max(steps) if steps else None
    return {"audit": audits[0].read_text() if audits else None, "weights": weights, "last_checkpoint": last,
            "report": (out / "report.md").is_file()}


def where_killed(recipe: str, out: Path) -> str:
    if (out / "report.md").is_file():
        return "after training"
    if recipe == "port":
        if any(out.glob("checkpoint-*.partial")):
            return "during a checkpoint write"
        return "between checkpoints" if any(out.glob("checkpoint-*")) else "before the first checkpoint"
    found = _toy_checkpoints(out)
    if not found:
        return "before the first checkpoint"
    return "between checkpoints" if _readable(found[-1][1]) else "during a checkpoint write"


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["audit"] is None or a["audit"] != b["audit"] or a["weights"] is None or b["weights"] is None:
        return False
    return a["weights"].keys() == b["weights"].keys() and all(torch.equal(a["weights"][k], b["weights"][k])
                                                              for k in a["weights"])


def run_to_end(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def one_try(recipe: str, out: Path, delay: float, reference: dict[str, Any], *, quick: bool, env: dict[str, str],
            timeout: float) -> dict[str, Any]:
    proc = subprocess.Popen(command(recipe, out, quick=quick, resume=False), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        killed = False  # it finished first
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    landed = where_killed(recipe, out) if killed else "finished before the kill"
    resumed = run_to_end(command(recipe, out, quick=quick, resume=True), env, timeout)
    state = final_state(recipe, out)
    complete = (resumed.returncode == 0 and state["report"] and state["audit"] is not None
                and state["last_checkpoint"] == reference["last_checkpoint"])
    named = "skipping" in resumed.stderr
    return {"delay_s": round(delay, 2), "killed": killed, "landed": landed, "resume_rc": resumed.returncode,
            "complete": bool(complete), "same_as_uninterrupted": bool(complete and same(state, reference)),
            "skipped_incomplete_named": named, "error_tail": "" if resumed.returncode == 0 else resumed.stderr[-600:]}


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, RESULTS / "kill_resume_toy.json", "1 try on a tiny toy config")
    parser.add_argument("--recipe", choices=["toy", "port"], default="toy")
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a resumed run may take")
    args = parser.parse_args(argv)
    if args.recipe == "port" and args.out == RESULTS / "kill_resume_toy.json":
        args.out = RESULTS / "kill_resume_port.json"
    tries = 1 if args.quick else args.tries
    started = time.perf_counter()
    command_line = shlex.join(["python", "benchmarks/kill_resume.py", *(argv if argv is not None else sys.argv[1:])])
    code, machine = code_version(REPO), machine_info()
    print_run_header(command_line, code, machine, f"seed {args.seed}, {tries} tries, recipe {args.recipe}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="kill_resume_") as tmp:
        t0 = time.perf_counter()
        ref = run_to_end(command(args.recipe, Path(tmp) / "reference", quick=args.quick, resume=False), env,
                         args.timeout)
        wall = time.perf_counter() - t0
        if ref.returncode != 0:
            print(ref.stderr[-3000:], file=sys.stderr)
            return 1
        reference = final_state(args.recipe, Path(tmp) / "reference")
        print(f"reference run: {wall:.1f} s, last checkpoint at step {reference['last_checkpoint']}")
        rows = []
        for i in range(tries):
            row = one_try(args.recipe, Path(tmp) / f"try{i}", rng.uniform(0.0, wall), reference, quick=args.quick,
                          env=env, timeout=args.timeout)
            rows.append(row)
            print(f"try {i + 1:2d}: killed after {row['delay_s']:5.1f} s ({row['landed']}); resumed rc "
                  f"{row['resume_rc']}, complete {row['complete']}, same as uninterrupted {row['same_as_uninterrupted']}"
                  + (", incomplete checkpoint named" if row["skipped_incomplete_named"] else ""), flush=True)
    n_complete = sum(r["complete"] for r in rows)
    n_same = sum(r["same_as_uninterrupted"] for r in rows)
    print(f"{n_complete} of {tries} tries ended complete; {n_same} of {tries} ended as the uninterrupted run, bit for "
          f"bit ({args.recipe} recipe, reference {wall:.1f} s)")
    write_output({"benchmark": "kill_resume", "command": command_line, "code": code, "machine": machine,
                  "seed": args.seed, "quick": args.quick, "recipe": args.recipe, "tries": tries,
                  "reference_seconds": wall, "complete": n_complete, "same_as_uninterrupted": n_same, "rows": rows},
                 args.out, started)
    return 0 if n_complete == tries else 1


if __name__ == "__main__":
    sys.exit(main())
