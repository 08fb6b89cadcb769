"""The ``spamlang`` group and its entry point: user errors become one line on stderr and exit status 2."""
from __future__ import annotations

import re
import sys
import warnings

import click

from spamlang import __version__
from spamlang.cli.options import _fail
from spamlang.errors import SpamLangError


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


def main(argv=None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback."""
    with warnings.catch_warnings():  # warnings as one line each while the command runs; restored after
        warnings.showwarning = lambda message, *a, **k: click.echo(f"spamlang: warning: {message}", err=True)
        _run(argv)


def _run(argv) -> None:
    try:
        cli.main(args=argv, prog_name="spamlang", standalone_mode=False, obj={"argv": argv})
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: bad flag, missing or malformed value
        _fail(exc.format_message().replace("\n", " "), code=exc.exit_code)
    except click.Abort:
        _fail("interrupted", code=130)
    except SpamLangError as exc:
        _fail(str(exc))
    except OSError as exc:  # an unwritable or missing path, a full disk
        _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
    except KeyboardInterrupt:
        _fail("interrupted", code=130)
    except MemoryError as exc:
        _fail(_memory_message(exc))
    except RuntimeError as exc:
        if not _OUT_OF_MEMORY.search(str(exc)):
            raise
        _fail(_memory_message(exc))
