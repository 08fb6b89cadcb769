"""Measuring the gradient bottleneck of real language models (``spamlang measure``).

A local causal LM (a Hugging Face checkpoint folder) runs over text tokenized with its own tokenizer; its last hidden
states H (N, D) are kept, and everything else is a function of H, the targets and the output embedding W (V, D),
streamed over token chunks so that the N x V logits never exist at once:

- :mod:`.logits`: the head's logits, probabilities and logit gradient, chunk by chunk;
- :mod:`.pertoken`: per-token destroyed ratio and kept cosine against col(W);
- :mod:`.spectrum`: the singular-value spectrum of the batch logit gradient G (exact Gram, or a Frequent Directions
  sketch with a computed error bound);
- :mod:`.update`: the equal-norm update experiment (ideal step -G against the realisable step);
- :mod:`.text`, :mod:`.checkpoint`, :mod:`.forward`: reading text, loading a checkpoint, computing H;
- :mod:`.record`, :mod:`.run`: the ``spamlang.measure/1`` record and the driver (the leaderboard's models table and
  plots: :mod:`spamlang.publishing.models`).
"""
