"""The report package: every file is written, PNGs are real images, text files hold what they promise."""

from __future__ import annotations

import base64
import dataclasses
import math
import re

import matplotlib.image
import pytest
import torch

from mmh_train.report import (
    PLOT_FILES,
    SUMMARY_MAX_LINES,
    RecordError,
    RunRecord,
    VariantResult,
    final_lid,
    forward_fill,
    label_counts,
    summary_text,
    top_memorized,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- synthetic runs

def _lid_history(g: torch.Generator, C: int, start: torch.Tensor, end: torch.Tensor, measured_every: int,
                 noise: float = 0.3) -> torch.Tensor:
    """``[C, P]`` LIDs moving from ``start`` to ``end``, each probe measured every ``measured_every`` checks."""
    P = start.shape[0]
    t = torch.linspace(0, 1, C)[:, None]
    lid = start[None] + (end - start)[None] * t + noise * torch.randn(C, P, generator=g)
    if measured_every > 1:  # rotation: probe p is measured at checks c with (c + p) % k == 0
        c = torch.arange(C)[:, None]
        p = torch.arange(P)[None]
        lid[((c + p) % measured_every) != 0] = math.nan
    return lid


def _variant(name: str, g: torch.Generator, *, C: int, train_index: torch.Tensor, lid_star: torch.Tensor,
             collapse: float, samples: torch.Tensor, copy_score: torch.Tensor, copy_nearest: torch.Tensor,
             Q: int = 12, with_ref: bool = True, remedies: dict | None = None,
             control_rate: float | None = 0.04, restored_step: int | None = None) -> VariantResult:
    P = train_index.shape[0]
    end = lid_star * (1.0 - collapse)
    lid_train = _lid_history(g, C, lid_star + 0.5, end, measured_every=2)
    lid_heldout = _lid_history(g, C, torch.full((Q,), float(lid_star.median()) + 0.5),
                               torch.full((Q,), float(lid_star.median())), measured_every=3)
    last = forward_fill(lid_train)[-1]
    gap = lid_star - last
    labels = torch.zeros(P, dtype=torch.long)
    labels[gap > 1.0] = 1
    labels[lid_star == 0] = 2
    copies = copy_score < 1 / 3
    return VariantResult(
        name=name, steps=torch.arange(1, C + 1) * 100, lid_train=lid_train, lid_heldout=lid_heldout,
        train_index=train_index, lid_ref=lid_star.clone() if with_ref else None,
        labels=labels if with_ref else None, od_gap=gap if with_ref else None,
        samples=samples, copy_score=copy_score, copy_nearest=copy_nearest,
        copy_rate=float(copies.float().mean()) if len(copies) else 0.0,
        quality={"sliced_wasserstein": 0.123 + collapse / 10},
        metrics={"lid_train": float(last.nanmean()), "lid_heldout": float(lid_heldout[-3:].nanmean()),
                 "lid_gap": float(lid_heldout[-3:].nanmean() - last.nanmean()),
                 "od_fraction": float((labels == 1).float().mean()), "dd_fraction": float((labels == 2).float().mean()),
                 "collapse": collapse},
        remedies=remedies or {}, train_seconds=12.5 + 10 * collapse, copy_control_rate=control_rate,
        copy_excess_interval=None if control_rate is None else (-0.01, 0.2), restored_step=restored_step)


def _copies_of(g: torch.Generator, train_x: torch.Tensor, n: int, n_copies: int, spread: float):
    """``n`` samples: ``n_copies`` near-exact copies of training points, the rest new points nearby."""
    N = train_x.shape[0]
    nearest = torch.randint(0, N, (n,), generator=g)
    noise = torch.randn((n, *train_x.shape[1:]), generator=g)
    scale = torch.full((n,), spread)
    scale[:n_copies] = 0.01
    samples = train_x[nearest] + scale.view(-1, *[1] * (train_x.dim() - 1)) * noise
    score = torch.rand(n, generator=g) * 0.5 + 0.45
    score[:n_copies] = torch.rand(n_copies, generator=g) * 0.1
    return samples, score, nearest


def vector_record(*, n_variants: int = 2, C: int = 5, P: int = 20, with_ref: bool = True, seed: int = 0) -> RunRecord:
    g = torch.Generator().manual_seed(seed)
    N, D = 300, 10
    basis = torch.linalg.qr(torch.randn(D, D, generator=g)).Q
    dims = torch.tensor([2, 4, 8])[torch.arange(N) % 3]
    z = torch.randn(N, D, generator=g) * (torch.arange(D)[None] < dims[:, None])
    train_x = (z @ basis.T) + 3.0 * torch.nn.functional.one_hot(torch.arange(N) % 3, D).float()
    duplicated = torch.zeros(N, dtype=torch.bool)
    duplicated[:12] = True
    train_x[:12] = train_x[0]  # one point duplicated 12 times: LID* = 0 there
    heldout_x = train_x[:40] + 0.1 * torch.randn(40, D, generator=g)
    train_index = torch.cat([torch.arange(4), torch.randperm(N - 12, generator=g)[:P - 4] + 12])
    lid_star = dims[train_index].double()
    lid_star[:4] = 0.0
    variants = []
    for i in range(n_variants):
        samples, score, nearest = _copies_of(g, train_x, 150, 12 if i == 0 else 2, 0.6)
        variants.append(_variant("baseline" if i == 0 else f"remedied-{i}", g, C=C, train_index=train_index,
                                 lid_star=lid_star, collapse=0.6 if i == 0 else 0.05, samples=samples.float(),
                                 copy_score=score.float(), copy_nearest=nearest, with_ref=with_ref,
                                 remedies={} if i == 0 else {"reweighting": "1 group down-weighted",
                                                             "penalty": "on at step 300",
                                                             "early_stopping": "stopped at step 400"},
                                 restored_step=200 if i == 1 else None))
    return RunRecord(recipe="toy", kind="vectors",
                     config={"seed": 0, "data": {"n_train": N, "dims": [2, 4, 8], "duplicates": 12},
                             "monitor": {"sigma": 0.1, "every": 100, "budget": None, "name": "flipd: exact"},
                             "remedies": [{"name": "penalty", "weight": 0.1}, {"name": "reweighting"}]},
                     train_x=train_x.float(), heldout_x=heldout_x.float(), variants=variants, duplicated=duplicated,
                     machine="2-core CPU, torch " + torch.__version__, command="python recipes/toy.py --quick",
                     audit_csv="mmh_audit.csv")


def image_record(*, size: int = 8, channels: int = 1, n_variants: int = 2, C: int = 5, P: int = 20,
                 seed: int = 0) -> RunRecord:
    g = torch.Generator().manual_seed(seed)
    N = 64
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(N, channels, 2, generator=g) * 1.2 - 0.6
    width = torch.rand(N, channels, 1, 1, generator=g) * 0.3 + 0.15
    d2 = (xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2
    train_x = (2 * torch.exp(-d2 / (2 * width ** 2)) - 1).float()  # blobs in [-1, 1]
    heldout_x = train_x[:10].flip(-1)
    train_index = torch.randperm(N, generator=g)[:P]
    lid_star = 10 + 4 * torch.rand(P, generator=g, dtype=torch.float64)
    lid_star[:2] = 0.0
    variants = []
    for i in range(n_variants):
        samples, score, nearest = _copies_of(g, train_x, 24, 5 if i == 0 else 1, 0.25)
        name = ["baseline", "remedied"][i] if i < 2 else f"remedied-{i}"
        variants.append(_variant(name, g, C=C, train_index=train_index,
                                 lid_star=lid_star, collapse=0.7 if i == 0 else 0.05,
                                 samples=samples.clamp(-1.2, 1.2), copy_score=score.float(), copy_nearest=nearest,
                                 remedies={} if i == 0 else {"penalty": "on at step 200"}))
    return RunRecord(recipe="digits", kind="images", config={"image_size": size, "channels": channels},
                     train_x=train_x, heldout_x=heldout_x, variants=variants, duplicated=None,
                     machine="2-core CPU", command=f"python recipes/digits.py --size {size}", audit_csv=None)


# ---------------------------------------------------------------- checks

def _check_outputs(run_dir, record: RunRecord) -> None:
    for rel in [*PLOT_FILES.values(), "report.md", "report.html", "summary.txt"]:
        path = run_dir / rel
        assert path.is_file() and path.stat().st_size > 0, rel
    for rel in PLOT_FILES.values():
        data = (run_dir / rel).read_bytes()
        assert data[:8] == PNG_SIGNATURE, rel
        image = matplotlib.image.imread(run_dir / rel)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, (rel, image.shape)
        assert float(image[..., :3].std()) > 0.01, f"{rel} is blank"
    md = (run_dir / "report.md").read_text()
    assert ("| variant | weights of step | LID_θ train | LID_θ held-out | LID gap | OD fraction | DD fraction | "
            "copy rate | control | excess (95% CI) |") in md
    for v in record.variants:
        assert v.name in md
    for rel in PLOT_FILES.values():
        assert f"]({rel})" in md
    assert "```" in md and record.command in md and record.machine in md
    page = (run_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # standalone: every plot is embedded, byte for byte, so the page shows them wherever it is moved
    for rel in PLOT_FILES.values():
        embedded = base64.b64encode((run_dir / rel).read_bytes()).decode("ascii")
        assert f'<img src="data:image/png;base64,{embedded}"' in page
    assert page.count("<table>") == page.count("</table>") >= 2
    assert "http://" not in page and "https://" not in page  # standalone: no external assets
    summary = (run_dir / "summary.txt").read_text()
    assert summary == summary_text(record)
    assert 0 < len(summary.splitlines()) <= SUMMARY_MAX_LINES
    assert not list(run_dir.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_vector_report(tmp_path):
    record = vector_record()
    path = write_report(tmp_path, record)
    assert path == tmp_path / "report.md"
    _check_outputs(tmp_path, record)
    md = path.read_text()
    assert "[mmh_audit.csv](mmh_audit.csv)" in md and "not found" in md  # linked even before the monitor wrote it
    assert "sliced_wasserstein" in md and "stopped at step 400" in md
    assert "dims: [2, 4, 8]" in md and "name: \"flipd: exact\"" in md and "- name: penalty" in md


def test_results_carry_the_control_the_excess_and_the_restored_step(tmp_path):
    record = vector_record()
    base, remedied = record.variants
    write_report(tmp_path, record)
    md = (tmp_path / "report.md").read_text()
    excess = f"{100 * (base.copy_rate - 0.04):+.1f}% [-1.0, +20.0]"
    assert f"| baseline | 500 | " in md and excess in md and "| 4.0% |" in md
    assert "| remedied-1 | 200 (restored) |" in md
    summary = summary_text(record).splitlines()
    assert "control" in summary[1] and "excess" in summary[1] and "step" in summary[1]
    base_line = next(line for line in summary if line.startswith("baseline"))
    assert "  500  " in base_line and f"{100 * (base.copy_rate - 0.04):+.1f}%" in base_line and "4.0%" in base_line
    assert "  200*  " in next(line for line in summary if line.startswith("remedied-1"))
    # LIDs, labels and samples describe the same weights: the restored check's
    torch.testing.assert_close(final_lid(remedied), forward_fill(remedied.lid_train)[1])
    torch.testing.assert_close(final_lid(base), forward_fill(base.lid_train)[-1])
    # LIDs outside [0, D] get a word of explanation; inside they do not
    held = base.lid_heldout.clamp(0.0, 10.0)
    for name, lids, words in (("plain", base.lid_train.clamp(0.0, 10.0), None),
                              ("neg", base.lid_train.clamp(0.0, 10.0) - 20.0, "negative (down to"),
                              ("high", base.lid_train.clamp(0.0, 10.0) + 30.0, "above the ambient dimension D = 10")):
        write_report(tmp_path / name, dataclasses.replace(
            record, variants=[dataclasses.replace(base, lid_train=lids, lid_heldout=held)]))
        text = (tmp_path / name / "report.md").read_text()
        assert (words in text) if words else ("which no dimension can be" not in text), name
    # without a control the excess says so instead of showing a number
    bare = dataclasses.replace(record, variants=[dataclasses.replace(base, copy_control_rate=None,
                                                                     copy_excess_interval=None)])
    write_report(tmp_path / "bare", bare)
    assert "— (no control)" in (tmp_path / "bare" / "report.md").read_text()


def test_image_reports(tmp_path):
    for size, channels in ((8, 1), (16, 1), (16, 3)):
        record = image_record(size=size, channels=channels)
        write_report(tmp_path / f"{size}x{channels}", record)
        _check_outputs(tmp_path / f"{size}x{channels}", record)


def test_rewrite_and_single_variant_without_reference(tmp_path):
    record = vector_record(n_variants=1, C=1, with_ref=False)
    write_report(tmp_path, record)
    write_report(tmp_path, record)  # overwriting an existing report works
    _check_outputs(tmp_path, record)
    assert "No labels" in (tmp_path / "report.md").read_text()
    assert "lowest LID_θ" in (tmp_path / "summary.txt").read_text()


def test_html_escapes_text(tmp_path):
    record = vector_record(n_variants=1)
    v = dataclasses.replace(record.variants[0], name="<b>a|b</b>", remedies={"penalty": "x < y & z"})
    record = dataclasses.replace(record, variants=[v], command="run --tag '<script>'")
    write_report(tmp_path, record)
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;a|b&lt;/b&gt;" in page
    assert "x &lt; y &amp; z" in page
    assert "a\\|b" in (tmp_path / "report.md").read_text()  # pipes escaped in Markdown tables


def test_summary_stays_on_one_screen():
    record = vector_record(n_variants=12)
    text = summary_text(record)
    lines = text.splitlines()
    assert len(lines) <= SUMMARY_MAX_LINES and max(map(len, lines)) <= 100
    assert "baseline" in text and "see report.md" in text


def test_helpers():
    h = torch.tensor([[1.0, math.nan], [math.nan, math.nan], [3.0, 2.0]])
    filled = forward_fill(h)
    assert torch.equal(filled[:, 0], torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64))
    assert math.isnan(filled[0, 1]) and math.isnan(filled[1, 1]) and filled[2, 1] == 2.0
    v = vector_record().variants[0]
    counts = label_counts(v)
    assert sum(counts.values()) == v.lid_train.shape[1] and counts["dd"] == 4
    positions, ranking = top_memorized(v, 5)
    assert ranking == "od_gap" and len(positions) == 5
    gaps = v.od_gap[positions]
    assert bool((gaps[:-1] >= gaps[1:]).all())


@pytest.mark.parametrize("change, message", [
    (lambda r, v: dataclasses.replace(r, variants=[]), "variants is empty"),
    (lambda r, v: dataclasses.replace(r, kind="audio"), "kind must be one of"),
    (lambda r, v: dataclasses.replace(r, variants=[dataclasses.replace(v, lid_train=v.lid_train[:3])]),
     "lid_train has 3 checks but steps has 5"),
    (lambda r, v: dataclasses.replace(r, variants=[dataclasses.replace(v, lid_ref=v.lid_ref[:-1])]),
     "lid_ref must have shape [P] = [20]"),
    (lambda r, v: dataclasses.replace(r, variants=[dataclasses.replace(v, copy_nearest=v.copy_nearest + 10_000)]),
     "copy_nearest must index the training set"),
    (lambda r, v: dataclasses.replace(r, variants=[dataclasses.replace(v, labels=v.labels + 5)]),
     "labels must be codes 0..2"),
    (lambda r, v: dataclasses.replace(r, variants=[v, v]), "appears twice"),
    (lambda r, v: dataclasses.replace(r, variants=[dataclasses.replace(v, samples=v.samples[:, :3])]),
     "samples must have shape"),
    (lambda r, v: dataclasses.replace(r, train_x=r.train_x[:0]), "train_x must be a non-empty batch"),
])
def test_bad_record_is_refused_before_writing(tmp_path, change, message):
    record = vector_record(n_variants=1)
    bad = change(record, record.variants[0])
    with pytest.raises(RecordError, match=re.escape(message)):
        write_report(tmp_path / "run", bad)
    assert not (tmp_path / "run").exists()  # nothing written


def test_not_a_record(tmp_path):
    with pytest.raises(TypeError, match="RunRecord"):
        write_report(tmp_path, {"recipe": "toy"})


def test_a_run_labelled_against_the_heldout_null_says_so_and_ranks_by_score(tmp_path):
    record = vector_record(n_variants=1)
    base = record.variants[0]
    score = torch.linspace(0.0, 1.0, base.train_index.shape[0], dtype=torch.float64)  # the last probe ranks first
    record = dataclasses.replace(record, variants=[dataclasses.replace(base, rule="heldout_null", score=score)])
    write_report(tmp_path, record)
    md = (tmp_path / "report.md").read_text()
    assert "| rank | train index | LID_θ | held-out null | gap | score | label |" in md
    assert "(ranked by score)" in md and f"| 1 | {int(base.train_index[-1])} |" in md
    assert "the held-out null" in md
    _check_outputs(tmp_path, record)
