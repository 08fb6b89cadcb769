"""The ``spamlang`` group and its entry point: user errors become one line on stderr and exit status 2."""
from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
import warnings

import click

from spamlang import __version__
from spamlang.cli.options import _fail
from spamlang.errors import SpamLangError, Terminated


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="spamlang")
def cli():
    """SpamLang: how much does the LM head's gradient bottleneck stop a model from learning?"""


#: allocator messages of an out-of-memory RuntimeError (PyTorch's CPU and CUDA allocators)
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory|not enough memory", re.I)


def _memory_message(exc: BaseException) -> str:
    tried = re.search(r"allocate (\d+) bytes", str(exc))
    if tried:
        from spamlang.system.capacity import human
        size = f" (an allocation of {human(int(tried.group(1)))} failed)"
    else:
        size = ""
    return f"out of memory{size}; lower the vocabulary size, width, batch size or workers"


#: the pip extra that installs each optional module a command may import
EXTRA_OF = {"tokenizers": "text", "gensim": "text", "pyarrow": "text", "transformers": "hf", "safetensors": "hf",
            "ray": "ray", "wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}
#: exit status of a command stopped by SIGTERM (128 + 15, as a shell reports it)
TERMINATED = 143


def _terminate(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the command runs, SIGTERM (SLURM preemption, ``timeout``, ``docker stop``) stops it as Ctrl-C does: what
    is finished is kept, one line is printed, exit status 143. The previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(exc: BaseException) -> tuple[str, int]:
    """(what stopped the command, its exit status) for a KeyboardInterrupt: Ctrl-C (130) or SIGTERM (143)."""
    return ("terminated (SIGTERM)", TERMINATED) if isinstance(exc, Terminated) else ("interrupted", 130)


def main(argv=None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback."""
    with warnings.catch_warnings(), _sigterm_as_interrupt():  # warnings as one line each; restored after
        warnings.showwarning = lambda message, *a, **k: click.echo(f"spamlang: warning: {message}", err=True)
        _run(argv)


def _run(argv) -> None:
    try:
        cli.main(args=argv, prog_name="spamlang", standalone_mode=False, obj={"argv": argv})
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare 'spamlang': the help, as --help prints it
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.ClickException as exc:  # usage errors: bad flag, missing or malformed value
        _fail(" ".join(exc.format_message().split()), code=exc.exit_code)
    except click.Abort:
        _fail("interrupted", code=130)
    except SpamLangError as exc:
        _fail(" ".join(str(exc).split()))
    except ModuleNotFoundError as exc:  # an optional library a command needs
        module = (exc.name or "").split(".")[0]
        if module not in EXTRA_OF:
            raise
        _fail(f"this needs the optional library {module}: pip install 'spamlang[{EXTRA_OF[module]}]'")
    except OSError as exc:  # an unwritable or missing path, a full disk
        _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
    except KeyboardInterrupt as exc:
        what, code = interrupted(exc)
        _fail(what, code=code)
    except MemoryError as exc:
        _fail(_memory_message(exc))
    except RuntimeError as exc:
        if not _OUT_OF_MEMORY.search(str(exc)):
            raise
        _fail(_memory_message(exc))
