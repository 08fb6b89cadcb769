"""No process-wide side effects: explicit file modes, TF32 only inside a run's precision context."""
from __future__ import annotations

import os
import stat

import torch

from spamlang.system import atomic
from spamlang.training.devices import precision


def test_atomic_files_get_their_explicit_mode_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic.write_text(tmp_path / "a.txt", "x")
        atomic.write_text(tmp_path / "b.txt", "y", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == atomic.FILE_MODE
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


def test_tf32_is_enabled_only_inside_the_precision_context():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with precision(torch.device("cuda")):  # only sets flags: runs without a GPU
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with precision(torch.device("cpu")):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
