"""Built-in SpamLang tasks, one file per task; the repository's top-level ``tasks/`` folder is this folder."""
