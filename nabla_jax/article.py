"""The article's ``optimize_reasoning_sequence``, in JAX, with its argument names and semantics.

Each step: ``onehot = ste_argmax(Z)`` (identity backward); the reward network reads
``onehot @ E_rm`` as ``inputs_embeds`` (here a gather forward, a matmul backward);
``reward = mean(logits[:, -1, :])`` of a causal-LM reward network, or the mean score of a
sequence-classification RM; ``kl = KL(p_ref ‖ p_θ)`` with torch's ``batchmean`` (÷ T);
``loss = -reward + λ·kl``; one Adam step (torch defaults). All steps run in one jitted ``lax.scan``.
As in the article, ``prompt_ids`` and ``lm_model`` do not enter the loss (kept for the signature).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nabla_jax.models.model import CausalLM, RewardModel
from nabla_jax.objectives import kl_ref_theta
from nabla_jax.ste import ste_argmax_embed

__all__ = ["KL_COLLAPSE_NATS", "optimize_reasoning_sequence"]

KL_COLLAPSE_NATS = 2.0  # the article: KL above 2 nats indicates distributional collapse


def _reward(reward_model, emb):
    """Scalar reward of ``emb [T, D]`` read as one sequence."""
    x = emb[None]
    if isinstance(reward_model, RewardModel):
        return jnp.mean(reward_model.score(inputs_embeds=x))
    hidden = reward_model.hidden_states(inputs_embeds=x)
    return jnp.mean(reward_model.head_logits(hidden[:, -1, :]))


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _optimize(init_logits, reward_model, ref_logits, lambda_kl, learning_rate, num_steps):
    tx = optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8)
    table = reward_model.embed_matrix()

    def loss_fn(z):
        reward = _reward(reward_model, ste_argmax_embed(z, table))
        kl = kl_ref_theta(z, ref_logits)
        return -reward + lambda_kl * kl, (reward, kl)

    def step(carry, _):
        z, state = carry
        (loss, (reward, kl)), g = jax.value_and_grad(loss_fn, has_aux=True)(z)
        updates, state = tx.update(g, state, z)
        return (optax.apply_updates(z, updates), state), (loss, reward, kl)

    (z, _), trace = jax.lax.scan(step, (init_logits, tx.init(init_logits)), None, length=num_steps)
    return z, trace


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
    z, (loss, reward, kl) = _optimize(
        init_logits, reward_model, ref_logits, lambda_kl, learning_rate, num_steps
    )
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
