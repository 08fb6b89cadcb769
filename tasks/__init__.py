"""Built-in SpamLang tasks, one file per task (installed as the package ``spamlang.tasks``)."""
