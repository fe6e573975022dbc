"""Loading the benchmark scripts (not a package) for their --quick tests."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def load_benchmark(monkeypatch):
    """``load_benchmark("estimators")`` imports benchmarks/estimators.py as a module."""

    def load(name: str):
        monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their sibling _timing.py
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load


def finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture
def is_finite_positive():
    return finite_positive


@pytest.fixture
def run_quick(tmp_path, capsys, load_benchmark):
    """``script, result, printed, status = run_quick("name", *args)``: runs ``name.py --quick *args --out
    tmp_path/name.json``, checks that the global torch RNG was left alone and reads the JSON it wrote."""
    import json

    import torch

    def run(name: str, *args: str):
        script = load_benchmark(name)
        out = tmp_path / f"{name}.json"
        rng_before = torch.get_rng_state()
        status = script.main(["--quick", *args, "--out", str(out)])
        printed = capsys.readouterr().out
        assert torch.equal(torch.get_rng_state(), rng_before), "the benchmark must not draw from the global RNG"
        return script, json.loads(out.read_text()), printed, status

    return run
