"""The article's ``optimize_reasoning_sequence``, in JAX, with its argument names and semantics.

Each step: ``onehot = ste_argmax(Z)`` (identity backward); the reward network reads
``onehot @ E_rm`` as ``inputs_embeds`` (here a gather forward, a matmul backward);
``reward = mean(logits[:, -1, :])`` of a causal-LM reward network, or the mean score of a
sequence-classification RM; ``kl = KL(p_ref ‖ p_θ)`` with torch's ``batchmean`` (÷ T);
``loss = -reward + λ·kl``; one Adam step (torch defaults). It is the refinement core with
``DTOConfig(objective="article")`` — every position updated, a constant learning rate, the models
at every step — on a window with no prefix, so all steps run in one jitted ``lax.scan``.
As in the article, ``prompt_ids`` and ``lm_model`` do not enter the loss (kept for the signature).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.functional.checks import check_finite_input
from nabla_jax.functional.dto_config import DTOConfig
from nabla_jax.functional.packing import PaddedProblems
from nabla_jax.functional.program import refine_rows_jit
from nabla_jax.models.model import CausalLM, RewardModel

__all__ = ["KL_COLLAPSE_NATS", "optimize_reasoning_sequence"]

KL_COLLAPSE_NATS = 2.0  # the article: KL above 2 nats indicates distributional collapse


def _window_only(init_logits, ref_logits) -> PaddedProblems:
    """One row whose reward input is the window alone (no LM prefix is read: article objective)."""
    t = init_logits.shape[0]
    ids = jnp.zeros((1, 0), jnp.int32)
    return PaddedProblems(
        lm_prefix_ids=jnp.zeros((1, 1), jnp.int32),
        lm_prefix_mask=jnp.ones((1, 1), jnp.int32),
        rm_prefix_ids=ids,
        rm_prefix_mask=ids,
        rm_suffix_ids=ids,
        rm_suffix_mask=ids,
        init=init_logits[None],
        window_mask=jnp.ones((1, t), jnp.int32),
        ref_logits=ref_logits[None],
        row_valid=jnp.ones((1,), jnp.float32),
    )


def optimize_reasoning_sequence(
    prompt_ids,
    init_logits,
    lm_model,
    reward_model,
    ref_logits,
    lambda_kl: float = 0.1,
    learning_rate: float = 0.05,
    num_steps: int = 5,
    *,
    return_trace: bool = False,
):
    """Iterative logit-space optimization with a straight-through argmax (the article's sketch).

    Args:
      prompt_ids: ``[prompt_len]`` — unused, as in the article.
      init_logits: ``[T, V]`` starting logits (the optimized variable).
      lm_model: unused, as in the article (may be None).
      reward_model: a ``CausalLM`` (reward = mean of the last position's logits, the sketch's
        form) or a ``RewardModel`` (its score); vocabulary must equal V.
      ref_logits: ``[T, V]`` frozen reference logits of the KL term.
      lambda_kl, learning_rate, num_steps: as in the article (λ 0.05–0.2, lr 0.01–0.1,
        3–5 steps recommended).
      return_trace: also return per-step ``(loss, reward, kl)`` arrays ``[num_steps]``.
    Returns:
      refined logits ``[T, V]`` (and the trace).
    """
    del prompt_ids, lm_model
    init_logits = jnp.asarray(init_logits, jnp.float32)
    ref_logits = jnp.asarray(ref_logits, jnp.float32)
    if init_logits.ndim != 2:
        raise ValueError(f"init_logits must be [seq_len, vocab_size], got {init_logits.shape}")
    if ref_logits.shape != init_logits.shape:
        raise ValueError(
            f"ref_logits {ref_logits.shape} must have the shape of init_logits {init_logits.shape}"
        )
    check_finite_input(init_logits, "init_logits")
    if not isinstance(reward_model, (CausalLM, RewardModel)):
        raise TypeError("reward_model must be a nabla_jax CausalLM or RewardModel")
    if reward_model.config.vocab_size != init_logits.shape[1]:
        raise ValueError(
            f"reward model vocabulary ({reward_model.config.vocab_size}) differs from the logits' "
            f"({init_logits.shape[1]}): the STE one-hot must index the reward model's embeddings"
        )
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int ≥ 1, got {num_steps!r}")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if num_steps > 8:
        warnings.warn(
            f"num_steps={num_steps}: beyond 8 straight-through steps the estimator's error tends "
            "to exceed the reward signal (the article's guidance)",
            stacklevel=2,
        )
    cfg = DTOConfig(
        objective="article",
        num_steps=num_steps,
        learning_rate=float(learning_rate),
        schedule="constant",
        lambda_kl=float(lambda_kl),
        reward_form="score" if isinstance(reward_model, RewardModel) else "mean_last_logits",
        update_postfix=True,
        grad_caching=False,
        on_nonfinite="flag",
    )
    batch = _window_only(init_logits, ref_logits)
    keys = jax.random.split(jax.random.key(0), 1)
    logits, _, trace = refine_rows_jit(
        None, reward_model, reward_model.embed_matrix(), batch, keys, cfg.hyper(),
        cfg=cfg.program(),
    )  # fmt: skip
    z = logits[0]
    loss, reward, kl = (np.asarray(a)[:, 0] for a in (trace.loss, trace.reward, trace.kl))
    bad = np.flatnonzero(~np.isfinite(np.asarray(loss)))
    if bad.size:
        raise FloatingPointError(
            f"non-finite loss at step {int(bad[0])} (0-based); lower learning_rate or check the "
            "inputs for NaN/inf"
        )
    high = np.flatnonzero(np.asarray(kl) > KL_COLLAPSE_NATS)
    if high.size:
        warnings.warn(
            f"KL above {KL_COLLAPSE_NATS} nats at step {int(high[0])}: the logits are collapsing "
            "away from the reference distribution; lower learning_rate or raise lambda_kl",
            stacklevel=2,
        )
    if return_trace:
        return z, {"loss": loss, "reward": reward, "kl": kl}
    return z
