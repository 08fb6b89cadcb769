"""``python -m spamlang``: the command line, as the ``spamlang`` script runs it."""
from spamlang.cli import main

if __name__ == "__main__":
    main()
