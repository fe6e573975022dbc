"""Two CPU processes (torchrun, gloo): Lightning DDP and the plain-loop guard.

Run in a subprocess: Lightning's DDP and pytest sharing one process once left an orphan that hung the run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_check.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_a_collapse_seen_by_one_rank_stops_both_on_the_same_step(ranks):
    a, b = (r["lightning"] for r in ranks)
    assert a["stopped"] and b["stopped"]
    assert a["global_step"] == b["global_step"] == 12  # the first check after the collapse (every 4 steps)
    assert a["check_steps"] == b["check_steps"] == [4, 8, 12]


def test_every_rank_holds_the_same_per_sample_table(ranks):
    assert ranks[0]["lightning"]["history"] == ranks[1]["lightning"]["history"]
    assert ranks[0]["plain_history"] == ranks[1]["plain_history"]
    assert -1 not in ranks[0]["lightning"]["history"][0][0]  # every probe measured: the ranks split them


def test_plain_loop_guard_stops_both_ranks_on_the_same_step(ranks):
    assert ranks[0]["plain_stopped_at"] == ranks[1]["plain_stopped_at"] == 12


def test_penalty_on_gives_identical_gradients_on_every_rank(ranks):
    assert ranks[0]["grad_norms"] == ranks[1]["grad_norms"]
    assert len(ranks[0]["grad_norms"]) == 12


def test_sampler_shards_are_disjoint_positions_of_one_shared_draw(ranks):
    a, b = ranks
    assert a["sampler_full"] == b["sampler_full"]
    assert a["sampler_shard"] == a["sampler_full"][0::2] and b["sampler_shard"] == b["sampler_full"][1::2]
    assert sorted(a["sampler_shard"] + b["sampler_shard"]) == sorted(a["sampler_full"])
