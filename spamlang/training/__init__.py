"""Training one run: the model (backbone + head), the trainer (optimizer, data streams, train step), held-out
evaluation with its baselines, the gradient probes, the loop that turns a RunConfig into a RunRecord
(``spamlang.train``), device and memory admission, and the experiment-tracker adapters."""
