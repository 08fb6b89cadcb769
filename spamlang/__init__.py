"""SpamLang: how much does the LM head's gradient bottleneck stop a model from learning?"""
__version__ = "0.1.0"

from .errors import ConfigError, SpamLangError
from .params import param
from .rng import Rng
from .task import TASKS, Targets, Task, make_task, register_task

__all__ = ["ConfigError", "SpamLangError", "param", "Rng", "TASKS", "Targets", "Task", "make_task", "register_task",
           "__version__"]
