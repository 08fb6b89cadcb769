"""SpamLang from Python: train a few tiny runs, score them, and plot their learning curves.

    python examples/quickstart.py out/quickstart          # about ten seconds on one CPU core

Trains the spam task (repeat the first token) at V = 128 with a full-rank head and a rank-2 head, two seeds each,
writes the run records to OUT/runs, prints the scorer's table and writes OUT/curves.png (test loss against step, mean
over seeds, one line per head).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402

import spamlang  # noqa: E402
from spamlang import record  # noqa: E402

HEADS = ({"head": "linear"}, {"head": "lowrank", "head_rank": 2})


def train_runs(folder: Path, steps: int, seeds: int) -> None:
    """Train every head at every seed and write each run record into ``folder``."""
    for head in HEADS:
        for seed in range(seeds):
            config = spamlang.RunConfig(task="spam", vocab_size=128, d_model=16, layers=1, seq_len=8, batch_size=32,
                                        steps=steps, lr=1e-2, warmup=5, eval_every=max(1, steps // 6),
                                        eval_sequences=64, diag_tokens=64, seed=seed, device="cpu", **head)
            run = spamlang.train(config, progress=False)
            record.write(run, folder)
            label = config.head + (f":{config.head_rank}" if config.head_rank else "")
            print(f"{run.run_id}  {label} seed {seed}: test loss {run.final.loss:.3f} (Bayes {run.bayes_loss:.3f})")


def plot_curves(history, path: Path) -> None:
    """Test loss against step, mean over seeds, one line per head design."""
    curves = history.groupby(["head_spec", "step"])["test_loss"].mean().unstack("head_spec")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    curves.plot(ax=ax, marker="o")
    ax.legend(title="head")
    ax.set_xlabel("step")
    ax.set_ylabel("test loss (nats)")
    ax.set_title("spam, V = 128, D = 16")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for runs/ and curves.png")
    parser.add_argument("--steps", type=int, default=120, help="training steps per run")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per head")
    args = parser.parse_args(argv)
    train_runs(args.out / "runs", args.steps, args.seeds)

    runs = spamlang.load_runs(args.out / "runs")  # one row per run, typed columns
    print(runs.groupby("head_spec")[["final_loss", "final_accuracy"]].mean().round(3).to_string())
    print(spamlang.format_table(spamlang.score(runs)))  # one row per configuration, seeds aggregated
    plot_curves(spamlang.history(runs), args.out / "curves.png")  # one row per evaluation
    print(f"wrote {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()
