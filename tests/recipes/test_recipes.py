"""Every recipe end to end on a tiny config, resume, two processes, and bad configs failing before work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))  # recipes import their sibling common.py

import digits  # noqa: E402
import toy  # noqa: E402

TINY_TOY = ["train.steps=60", "monitor.every_n_steps=30", "data.n_train=16", "train.n_samples=64",
            "train.sample_steps=4", "train.progress_bar=false", "train.checkpoint_every=30"]
TINY_DIGITS = ["train.steps=6", "monitor.every_n_steps=3", "data.n_train=16", "train.batch_size=8",
               "monitor.n_train_probes=8", "monitor.n_heldout_probes=8", "train.n_samples=8", "train.sample_steps=3",
               "train.progress_bar=false", "model.channels=[8,16]", "monitor.reference_k=5"]
REPORT_FILES = ["report.md", "report.html", "summary.txt", "config.yaml", "plots/lid_over_training.png",
                "plots/lid_scatter.png", "plots/samples.png"]


def assert_report(run_dir: Path, variants=("baseline", "stopped_only", "remedied")):
    for name in REPORT_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    for variant in variants:
        assert (run_dir / variant / "mmh_audit.csv").stat().st_size > 0
    text = (run_dir / "report.md").read_text()
    assert all(v in text for v in variants)


def test_toy_end_to_end(tmp_path, capsys):
    assert toy.main([f"out_dir={tmp_path}", *TINY_TOY]) == 0
    assert_report(tmp_path)
    out = capsys.readouterr().out
    assert "copies  control  excess" in out and "stopped_only" in out
    md = (tmp_path / "report.md").read_text()
    assert "| control | excess (95% CI) |" in md and "weights of step" in md


def test_toy_picks_one_thread_unless_told(tmp_path, monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert toy.main([f"out_dir={tmp_path / 'a'}", *TINY_TOY, "remedies.compare=false"]) == 0
        assert torch.get_num_threads() == 1  # the small MLP's fastest setting
        assert toy.main([f"out_dir={tmp_path / 'b'}", *TINY_TOY, "remedies.compare=false", "train.threads=2"]) == 0
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the caller's explicit choice stands
        assert toy.main([f"out_dir={tmp_path / 'c'}", *TINY_TOY, "remedies.compare=false"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_progress_is_a_few_lines_not_a_bar_per_epoch(tmp_path, capfd):
    args = [a for a in TINY_TOY if a != "train.progress_bar=false"] + ["remedies.compare=false", "train.steps=100"]
    assert toy.main([f"out_dir={tmp_path}", *args]) == 0
    out, err = capfd.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("remedied: step")]
    assert len(lines) == 10 and lines[-1].startswith("remedied: step 100/100  loss ")
    assert "it/s" not in out + err  # no tqdm bar


def test_toy_as_a_rectified_flow(tmp_path):
    assert toy.main([f"out_dir={tmp_path}", *TINY_TOY, "train.objective=rectified_flow", "remedies.compare=false"]) == 0
    assert_report(tmp_path, variants=("remedied",))


def test_toy_resume_reproduces_the_uninterrupted_run(tmp_path):
    """Stopped at step 30 and resumed from that checkpoint into the same folder: the weights at step 60 equal
    the uninterrupted run's bitwise, one log directory holds the metrics of both parts, and the training
    seconds count both parts."""
    import torch

    args = [*TINY_TOY, "remedies.compare=false", "remedies.early_stopping=false", "train.logger=csv"]
    assert toy.main([f"out_dir={tmp_path / 'whole'}", *args]) == 0
    assert toy.main([f"out_dir={tmp_path / 'parts'}", *args, "train.steps=30"]) == 0
    first = (tmp_path / "parts" / "summary.txt").read_text()
    checkpoint = next((tmp_path / "parts" / "remedied" / "checkpoints").glob("*step=30*.ckpt"))
    assert toy.main([f"out_dir={tmp_path / 'parts'}", *args, f"train.resume={checkpoint}"]) == 0

    def weights(run):
        path = next((tmp_path / run / "remedied" / "checkpoints").glob("*step=60*.ckpt"))
        return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]

    whole, parts = weights("whole"), weights("parts")
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    logs = sorted(p.name for p in (tmp_path / "parts" / "remedied" / "logs").iterdir())
    assert logs == ["version_0"]
    assert (tmp_path / "parts" / "remedied" / "logs" / "version_0" / "metrics.csv").is_file()
    audit = (tmp_path / "parts" / "remedied" / "mmh_audit.csv").read_text().splitlines()[0]
    assert "lid@step30" in audit and "lid@step60" in audit  # the monitor's history goes on
    train_seconds = lambda run: float(next(line for line in (tmp_path / run / "summary.txt").read_text().splitlines()  # noqa: E731
                                           if line.startswith("remedied")).split()[-1])
    assert train_seconds("parts") > float(next(line for line in first.splitlines()
                                               if line.startswith("remedied")).split()[-1])  # both parts counted


def test_digits_class_conditional_end_to_end(tmp_path):
    assert digits.main([f"out_dir={tmp_path}", *TINY_DIGITS, "model.class_conditional=true"]) == 0
    assert_report(tmp_path, variants=("model",))  # digits defaults to the monitor alone
    assert "lid_conditional" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["train.stepz=10"], "Valid keys"),
    (["train.steps=many"], "steps"),
    (["data.dims=[2,20]"], "must fit in data.ambient_dim"),
    (["data.dims=[]"], "must list piece dimensions"),
    (["train.objective=score"], "choose one of"),
    (["--steps", "10"], "key=value"),
    (["config=missing.yaml"], "does not exist"),
    (["train.resume=nowhere.ckpt"], "does not exist"),
    (["model.width=0"], "model.width must be ≥ 1"),
    (["remedies.patience=-1"], "remedies.patience must be ≥ 0"),
    (["train.steps=100", "monitor.every_n_steps=1000"], "the monitor would never check"),
    (["monitor.sigma=-1"], "monitor.sigma must be a finite number > 0"),
    (["data.dup_fraction=2.0"], "choose it in [0, 1]"),
    (["train.lr=-1"], "train.lr must be a finite number > 0"),
    (["monitor.reference_k=0"], "monitor.reference_k must be ≥ 1"),
    (["monitor.fdr=1.5"], "monitor.fdr=1.5 must lie in (0, 1)"),
    (["monitor.reference=nearby"], "choose one of 'auto', 'heldout_null', 'data'"),
])
def test_bad_toy_configs_fail_before_training(tmp_path, capsys, argv, message):
    assert toy.main([f"out_dir={tmp_path / 'run'}", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written


def test_help_lists_every_key_with_its_default_and_a_real_example(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        toy.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "train:\n  steps: 8000" in out and "remedies:" in out and "e.g. data.n_train=64" in out
    assert toy.main(["--steps=10"]) == 2
    assert "e.g. data.n_train=64" in capsys.readouterr().err  # a key that exists


def test_tensorboard_logger_without_tensorboard_fails_before_training(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    assert toy.main([f"out_dir={tmp_path / 'run'}", "train.logger=tensorboard"]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err


def test_toy_runs_as_two_processes_under_accelerate_launch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / "toy.py"),
           f"out_dir={tmp_path}", *TINY_TOY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    assert_report(tmp_path)


import digits_accelerate  # noqa: E402
import flow  # noqa: E402

TINY_LOOP = [a for a in TINY_DIGITS if a != "train.progress_bar=false"] + ["train.checkpoint_every=3"]


def test_flow_recipe_on_toy(tmp_path):
    assert flow.main([f"out_dir={tmp_path}", *TINY_TOY, "remedies.compare=false"]) == 0
    assert "objective: rectified_flow" in (tmp_path / "config.yaml").read_text()
    assert_report(tmp_path, variants=("remedied",))
    assert flow.main(["dataset=cifar"]) == 2


def test_plain_accelerate_loop_end_to_end_and_resume(tmp_path):
    assert digits_accelerate.main([f"out_dir={tmp_path / 'a'}", *TINY_LOOP, "train.steps=3"]) == 0
    assert_report(tmp_path / "a", variants=("model",))
    checkpoint = tmp_path / "a" / "checkpoints" / "step_3"
    assert digits_accelerate.main([f"out_dir={tmp_path / 'b'}", *TINY_LOOP, f"train.resume={checkpoint}"]) == 0
    header = (tmp_path / "b" / "model" / "mmh_audit.csv").read_text().splitlines()[0]
    assert "lid@step3" in header and "lid@step6" in header  # the monitor's history came back with the state


def test_plain_accelerate_loop_as_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "recipes" / "digits_accelerate.py"), f"out_dir={tmp_path}", *TINY_LOOP]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_report(tmp_path, variants=("model",))


def test_plain_loop_config_errors(tmp_path, capsys):
    assert digits_accelerate.main([f"out_dir={tmp_path}", "model.class_conditional=true"]) == 2
    assert "recipes/digits.py does both" in capsys.readouterr().err
