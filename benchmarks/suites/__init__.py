"""Built-in suite files (installed as the package data ``spamlang.suites``)."""
