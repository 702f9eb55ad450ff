"""FLOPs of model calls, counted analytically at the shapes the compiled programs run.

A model call is one forward of the fixed-shape programs (docs/algorithm.md#counting-model-calls):

* a **generated token**: one token of one row forwarded through the LM, its attention reading
  every slot of the row's key/value cache (``S`` slots: the compiled program masks the unused
  ones but still multiplies them), and the LM head;
* an **RM scoring**: the RM input buffer (``W`` slots: template prefix, response and suffix
  buffers) forwarded at once, attention over all ``W`` slots, and the score head.

:func:`token_flops` counts the matrix products of a forward (2 FLOPs per multiply-add: the q/k/v
and output projections, the MLP — three matrices gated, two for GPT-2 — the attention scores and
their weighted sum, the head). Elementwise work (norms, RoPE, softmax, activations) is left out:
a few percent of the total, bounded in the test that checks this count against XLA's cost
analysis of the compiled forward (``tests/test_search_flops.py``).
"""

from __future__ import annotations

__all__ = ["call_flops", "nabla_flops", "sequence_flops", "token_flops"]


def _mlp_matrices(config) -> int:
    return 2 if config.model_type == "gpt2" else 3


def token_flops(config, context: int, *, head: bool = True) -> int:
    """Matrix-product FLOPs of forwarding one token that attends over ``context`` key slots.

    Args:
      config: a ``ModelConfig``.
      context: key/value slots the attention reads (the cache size of the program).
      head: include the LM head (``2·H·V``).
    """
    h, i = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    layer = 2 * h * q + 2 * 2 * h * kv + 2 * q * h + _mlp_matrices(config) * 2 * h * i
    layer += 2 * 2 * q * context  # scores q·k and the weighted sum of values
    return config.num_layers * layer + (2 * h * config.vocab_size if head else 0)


def sequence_flops(config, width: int, *, labels: int | None = None) -> int:
    """FLOPs of forwarding a ``width``-slot input at once (each slot attends over all
    ``width`` slots, as the masked fixed-shape program computes) and a score head of
    ``labels`` outputs at one position (default ``config.num_labels``)."""
    labels = config.num_labels if labels is None else labels
    return width * token_flops(config, width, head=False) + 2 * config.hidden_size * labels


def call_flops(lm_config, rm_config, *, rollout_calls: int, cache_slots: int, score_calls: int,
               rm_width: int) -> int:  # fmt: skip
    """FLOPs of a method's model calls: ``rollout_calls`` generated tokens over
    ``cache_slots``-slot caches and ``score_calls`` RM scorings of ``rm_width``-slot inputs."""
    roll = int(rollout_calls) * token_flops(lm_config, cache_slots)
    return roll + int(score_calls) * sequence_flops(rm_config, rm_width)


def nabla_flops(
    lm_config, rm_config, stats: dict, *, prompt: int, rm_prefix: int, rm_suffix: int,
    length: int, window: int, paper_objective: bool,
) -> int:  # fmt: skip
    """FLOPs of a ∇-Reasoner decode's model calls, from its counters (``stats``) and the
    compiled loop's buffers (``prompt`` / ``rm_prefix`` / ``rm_suffix`` slot buckets, response
    ``length`` ``L``, DTO ``window`` ``K``).

    * rollouts: ``rollout_calls`` generated tokens over the LM cache of ``P + L + K`` slots;
    * RM scorings: ``score_calls`` forwards of the ``Q + L + S``-slot input;
    * each full DTO step and each probe: forward and backward (counted 3× the forward) of the
      window's ``K`` tokens through the LM (paper objective) over its cache, and of the window,
      tail and suffix (``L + S`` slots, the largest window bucket) through the RM over its
      ``Q + 2L + S``-slot cache. Steps are counted at that largest bucket, so the DTO share is
      an upper bound when shorter rests took a smaller compiled window.
    """
    lm_slots = prompt + length + window
    rm_slots = rm_prefix + 2 * length + rm_suffix
    per_call = (2 if paper_objective else 0) + 2
    steps = (int(stats.get("dto_calls", 0)) + int(stats.get("probe_calls", 0))) // per_call
    lm_step = window * token_flops(lm_config, lm_slots) if paper_objective else 0
    rm_step = (length + rm_suffix) * token_flops(rm_config, rm_slots, head=False)
    dto = steps * 3 * (lm_step + rm_step)
    return dto + call_flops(
        lm_config, rm_config, rollout_calls=int(stats.get("rollout_calls", 0)),
        cache_slots=lm_slots, score_calls=int(stats.get("score_calls", 0)),
        rm_width=rm_prefix + length + rm_suffix,
    )  # fmt: skip
