"""Many runs: suite files whose grids expand to run configurations, the runner (which runs are pending, the adaptive
learning-rate and budget rounds) and its executors (in-process, worker processes, Ray), and plans with their cost
(``spamlang run --dry-run``)."""
