"""Token data outside training: corpora generated from a task (``spamlang generate``), natural-text corpora and their
tokenizers (the ``text`` task's data), and the property checks every task must pass (``spamlang tasks validate``)."""
