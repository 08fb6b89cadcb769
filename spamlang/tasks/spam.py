"""SpamLang, the paper's synthetic language: one symbol repeated for the whole sequence."""
from __future__ import annotations

from dataclasses import dataclass

from spamlang.task import Task, register_task

from spamlang.tasks._sampling import first_symbols, log_prob_of_rule, uniform_one_hot_targets


@register_task
@dataclass(frozen=True)
class Spam(Task):
    """One symbol drawn uniformly from the vocabulary, repeated: the next token is always the first one.

    Examples (V = 10): ``7 7 7 7 7 7``, ``2 2 2 2 2 2``. Bayes loss on positions >= 1: 0.
    """

    name = "spam"
    version = 1
    deterministic = True

    def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
        symbol = first_symbols(generator, num_sequences, vocab_size, device, offset)
        return symbol[:, None].expand(num_sequences, seq_len).contiguous()

    def symbols_per_sequence(self, seq_len):
        return 1  # one symbol per sequence

    def copies_input(self):
        return True

    def log_prob(self, tokens, vocab_size):
        return log_prob_of_rule(tokens, tokens[:, :1].expand_as(tokens), self.predictable_mask(tokens.shape[1]))

    def target_distributions(self, vocab_size, seq_len, num_contexts, generator):
        return uniform_one_hot_targets(vocab_size, num_contexts, generator)
