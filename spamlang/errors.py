"""User-facing errors: the CLI prints them on one line and exits with status 2."""


class SpamLangError(Exception):
    """A problem with the user's input (a flag, a task, a suite file, a corpus, a record)."""


class ConfigError(SpamLangError, ValueError):
    """A parameter or configuration value outside what is allowed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while a command runs: stops it as Ctrl-C does (see spamlang.cli.app)."""
