"""From run records to findings: records as typed frames, the one definition of a configuration and of the choice
of learning rate, expressivity floors, the scorer's gaps and verdicts, statistics over seeds, scaling fits, the
gradient-only control and tokens-to-target speedups. Pure functions of the records (floors are cached)."""
