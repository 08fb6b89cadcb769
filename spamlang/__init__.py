"""SpamLang: how much does the LM head's gradient bottleneck stop a model from learning?"""
__version__ = "0.1.0"

from spamlang import _moved
from spamlang.errors import ConfigError, SpamLangError
from spamlang.params import param

_moved.install()

#: the rest of the Python API, imported on first use: importing ``spamlang`` (and starting the command line) loads
#: neither torch nor the trainer, and importing a task or the scorer never loads the trainer (data flows one way)
_LAZY = {"RunConfig": ("config", "RunConfig"), "Rng": ("rng", "Rng"), "TASKS": ("task", "TASKS"),
         "Targets": ("task", "Targets"), "Task": ("task", "Task"), "make_task": ("task", "make_task"),
         "register_task": ("task", "register_task"),
         "train": ("training.loop", "train"), "RunRecord": ("record", "RunRecord"),
         "load_runs": ("scoring.frames", "load_runs"), "history": ("scoring.frames", "history"),
         "score": ("scoring.scorer", "score_frame"), "format_table": ("publishing.tables", "format_table")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'spamlang' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["ConfigError", "SpamLangError", "RunConfig", "param", "Rng", "TASKS", "Targets", "Task", "make_task",
           "register_task", "train", "RunRecord", "load_runs", "history", "score", "format_table", "__version__"]
