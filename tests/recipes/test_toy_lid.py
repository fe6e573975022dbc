import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_main_job_quick_run_prints_the_table():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "toy_lid.py"), "--quick"], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    for row in ("truth", "FLIPD (trained MLP)", "FLIPD (exact denoiser)", "LPCA", "MLE", "TwoNN"):
        assert row in lines, out
    exact = [float(v) for v in lines["FLIPD (exact denoiser)"].split()[-4:]]
    assert all(abs(got - want) < 0.1 for got, want in zip(exact[:3], (2, 4, 8))), out
