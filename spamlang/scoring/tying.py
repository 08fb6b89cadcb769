"""Tying and copy tasks: which configurations start with the answer.

A head that shares the input embedding (``Head.shares_embedding``) computes the logit of symbol v as h · e_v; on a
task whose target is the current input token (``Task.copies_input``), h starts near e_x through the residual stream,
so the target's logit ‖e_x‖² is already the largest: the copy solution is present at initialisation and the task
does not show whether the head can learn (docs/science.md, "Tying and copy tasks").
"""
from __future__ import annotations

from typing import Any, Mapping

from spamlang.errors import SpamLangError
from spamlang.heads.base import HEADS
from spamlang.task import make_task


def copies_input(task: str, task_params: Mapping[str, Any] | None) -> bool:
    """Whether the task's target is the current input token (False for a task not registered here)."""
    try:
        return make_task(task, task_params or {}).copies_input()
    except SpamLangError:
        return False


def shares_embedding(head: str) -> bool:
    """Whether the head's output matrix is the input embedding (False for a head not registered here)."""
    try:
        return HEADS.get(head).shares_embedding
    except SpamLangError:
        return False


def copy_at_init(task: str, task_params: Mapping[str, Any] | None, head: str) -> bool:
    """Whether a run of this task and head starts with the copy solution."""
    return shares_embedding(head) and copies_input(task, task_params)
