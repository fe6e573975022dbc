"""Checkpoint folders that appear whole or not at all, and "latest" that means the latest complete one.

``accelerator.save_state(path)`` writes many files into ``path``; a run killed halfway leaves a folder that
looks like a checkpoint and is not one, and ``--resume_from_checkpoint latest`` then picks it and fails. Here
the state is written into ``<path>.partial`` and renamed to ``path`` once every process has written its part
(a rename within one folder is atomic), so a folder named like a checkpoint is always complete.

    save_state_atomic(accelerator, os.path.join(args.output_dir, f"checkpoint-{global_step}"))
    path = latest_checkpoint(args.output_dir, "checkpoint-")      # None when there is none yet
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

__all__ = ["PARTIAL_SUFFIX", "save_state_atomic", "latest_checkpoint", "checkpoint_step"]

#: A checkpoint folder being written (or left by a run killed while writing it).
PARTIAL_SUFFIX = ".partial"


def save_state_atomic(accelerator: Any, path: str | os.PathLike) -> Path:
    """``accelerator.save_state`` into ``<path>.partial``, then one rename to ``path`` on the main process.

    Every process must call it (as ``save_state``). A leftover ``.partial`` of an earlier, killed run at the same
    path is removed first; an existing complete ``path`` is replaced only after the new state is whole.
    """
    final = Path(path)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def checkpoint_step(path: str | os.PathLike, prefix: str) -> int | None:
    """The step in a folder name ``<prefix><step>`` (e.g. ``checkpoint-300``), or None for any other name."""
    match = re.fullmatch(re.escape(prefix) + r"(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def latest_checkpoint(folder: str | os.PathLike, prefix: str) -> str | None:
    """The complete checkpoint folder ``<folder>/<prefix><step>`` with the largest step, or None.

    Folders still named ``.partial`` (a run killed while writing them) are skipped, with a warning that names
    them; so are files and names that do not end in a step.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    complete = [(checkpoint_step(p, prefix), p) for p in folder.iterdir() if p.is_dir()]
    complete = [(step, p) for step, p in complete if step is not None]
    partial = sorted(p.name for p in folder.glob(f"{prefix}*{PARTIAL_SUFFIX}"))
    if partial:
        warnings.warn(f"skipping incomplete checkpoint folder(s) {', '.join(partial)} in {folder} (a run was killed "
                      f"while writing them); resuming from the latest complete one.", RuntimeWarning, stacklevel=2)
    return str(max(complete)[1]) if complete else None
