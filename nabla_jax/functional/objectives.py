"""Loss terms of ∇-Reasoner's DTO: rewards, LM log-likelihood, KL penalties, composite losses.

All functions are pure functions over arrays. Units: logits and log-probabilities in nats; KL in
nats (per first-dim row, see :func:`kl_ref_theta`); rewards in the reward model's own units.

Two loss forms (docs/algorithm.md, "The objective"):

* article (the sketch): ``loss = -reward + lambda_kl * kl`` with
  ``reward = article_reward(rm_logits)`` and ``kl = kl_ref_theta(logits, ref_logits)`` (PyTorch
  ``F.kl_div`` semantics, i.e. KL(p_ref‖p_θ)), or ``kl_theta_ref`` for the prose's direction.
* paper (DTO): ``loss = -(loglik + reward_coeff * reward)`` with ``loglik = paper_loglik(...)`` and
  ``reward = score_reward(scores)`` from a sequence-classification reward model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

__all__ = [
    "KL_DIRECTIONS",
    "LossTerms",
    "article_loss",
    "article_reward",
    "article_terms",
    "kl_divergence",
    "kl_positions",
    "kl_ref_theta",
    "kl_theta_ref",
    "loglik_positions",
    "paper_loglik",
    "paper_loss",
    "paper_terms",
    "resolve_kl_direction",
    "score_reward",
]


def _floating(x, name: str):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    return x


# --------------------------------------------------------------------------------------------
# rewards
# --------------------------------------------------------------------------------------------


def article_reward(rm_logits):
    """The sketch's reward: ``rm_logits[:, -1, :].mean()``.

    Args:
      rm_logits: ``[B, T, C]`` logits of a reward network with per-position outputs.

    Returns:
      scalar: the mean over ``B`` and ``C`` of the last position's logits.

    Raises:
      ValueError: if ``rm_logits`` is not 3-D (a sequence-classification head gives ``[B]`` or
        ``[B, 1]`` scores: use :func:`score_reward`) or has an empty axis.
    """
    rm_logits = _floating(rm_logits, "rm_logits")
    if rm_logits.ndim != 3:
        raise ValueError(
            f"article_reward expects per-position reward logits [B, T, C], got shape "
            f"{rm_logits.shape}; for a sequence-classification reward model's scores ([B] or "
            "[B, 1]) use score_reward"
        )
    if 0 in rm_logits.shape:
        raise ValueError(f"rm_logits has an empty axis: shape {rm_logits.shape}")
    return jnp.mean(rm_logits[:, -1, :])


def score_reward(scores, *, reduce="mean"):
    """Reward from a sequence-classification reward model (one label), as the paper uses it.

    Args:
      scores: ``[B]`` scores (e.g. ``rm.score(...)``) or ``[B, 1]`` one-label logits.
      reduce: ``"mean"`` -> scalar mean over ``B`` (for ``B = 1`` the score itself);
        ``"sum"`` -> scalar sum; ``"none"`` -> the ``[B]`` scores.

    Returns:
      scalar, or ``[B]`` for ``reduce="none"``.
    """
    scores = _floating(scores, "scores")
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1:
        raise ValueError(
            f"score_reward expects [B] scores or [B, 1] one-label logits, got shape "
            f"{scores.shape}; for per-position reward logits [B, T, C] use article_reward"
        )
    if scores.shape[0] == 0:
        raise ValueError("scores is empty (B = 0)")
    if reduce == "mean":
        return jnp.mean(scores)
    if reduce == "sum":
        return jnp.sum(scores)
    if reduce == "none":
        return scores
    raise ValueError(f"reduce must be 'mean', 'sum' or 'none', got {reduce!r}")


# --------------------------------------------------------------------------------------------
# KL penalties
# --------------------------------------------------------------------------------------------


def _check_kl_pair(logits, ref_logits):
    logits = _floating(logits, "logits")
    ref_logits = _floating(ref_logits, "ref_logits")
    if logits.shape != ref_logits.shape:
        raise ValueError(
            f"logits and ref_logits must have the same shape, got {logits.shape} and "
            f"{ref_logits.shape}"
        )
    if logits.ndim < 2:
        raise ValueError(
            f"KL expects logits [T, V] or [B, T, V] (the first dim is the 'batchmean' divisor), "
            f"got shape {logits.shape}; add a leading axis for a single distribution"
        )
    if 0 in logits.shape:
        raise ValueError(f"logits has an empty axis: shape {logits.shape}")
    return logits, ref_logits


def kl_ref_theta(logits, ref_logits):
    """KL(p_ref ‖ p_θ) with PyTorch ``F.kl_div(log_softmax(logits), softmax(ref), "batchmean")``.

    ``sum over all elements of p_ref * (log p_ref - log p_θ)``, divided by ``logits.shape[0]`` —
    the first dim, exactly like torch's ``batchmean``: ``T`` for ``[T, V]`` input, ``B`` (not
    ``B*T``) for ``[B, T, V]``. ``p_ref = 0`` entries contribute 0 (``xlogy``), as in torch.
    This is the direction the article's *code* computes (its prose says KL(p_θ ‖ p_ref)).

    Args:
      logits: ``[T, V]`` or ``[B, T, V]`` logits of p_θ (softmax over the last axis).
      ref_logits: same shape, reference logits; treated as a constant (``stop_gradient``), like
        the sketch's ``.detach()``.

    Returns:
      scalar KL in nats per first-dim row.
    """
    logits, ref_logits = _check_kl_pair(logits, ref_logits)
    return jnp.sum(kl_positions(logits, ref_logits, "ref_theta")) / logits.shape[0]


def kl_theta_ref(logits, ref_logits):
    """KL(p_θ ‖ p_ref) (the article's prose direction), same ``batchmean`` normalisation.

    ``sum p_θ * (log p_θ - log p_ref) / logits.shape[0]``; equals torch
    ``F.kl_div(log_softmax(ref), softmax(logits), "batchmean")``. Computed in log space so the
    gradient stays finite where ``p_θ`` underflows to 0; entries with ``p_θ = 0`` contribute 0.

    Args:
      logits: ``[T, V]`` or ``[B, T, V]`` logits of p_θ.
      ref_logits: same shape; constant (``stop_gradient``).

    Returns:
      scalar KL in nats per first-dim row.
    """
    logits, ref_logits = _check_kl_pair(logits, ref_logits)
    return jnp.sum(kl_positions(logits, ref_logits, "theta_ref")) / logits.shape[0]


def kl_positions(logits, ref_logits, direction="ref_theta"):
    """Per-position KL ``[...]`` over the last (vocabulary) axis: the one KL implementation.

    ``"ref_theta"``: ``Σ_v p_ref (log p_ref - log p_θ)`` (``p_ref = 0`` entries contribute 0, as
    ``xlogy``); ``"theta_ref"``: ``Σ_v p_θ (log p_θ - log p_ref)`` in log space, so the gradient
    stays finite where ``p_θ`` underflows. ``ref_logits`` is a constant (``stop_gradient``).
    No shape checks (traced inside the refinement); the scalar forms above check and reduce.

    Args:
      logits: ``[..., V]`` logits of p_θ.
      ref_logits: ``[..., V]`` reference logits.

    Returns:
      ``[...]`` KL in nats per position.
    """
    log_q = jax.nn.log_softmax(logits, axis=-1)
    log_p_ref = jax.nn.log_softmax(jax.lax.stop_gradient(ref_logits), axis=-1)
    if direction == "ref_theta":
        p_ref = jnp.exp(log_p_ref)
        return jnp.sum(xlogy(p_ref, p_ref) - p_ref * log_q, axis=-1)
    q = jnp.exp(log_q)
    diff = jnp.where(q > 0, log_q - log_p_ref, jnp.zeros_like(log_q))
    return jnp.sum(q * diff, axis=-1)


KL_DIRECTIONS = ("ref_theta", "theta_ref")
_KL_FNS = {"ref_theta": kl_ref_theta, "theta_ref": kl_theta_ref}


def resolve_kl_direction(direction: str) -> Callable:
    """``"ref_theta"`` -> :func:`kl_ref_theta` (torch ``kl_div`` / the sketch's code);
    ``"theta_ref"`` -> :func:`kl_theta_ref` (the article's prose). Anything else: ``ValueError``."""
    try:
        return _KL_FNS[direction]
    except (KeyError, TypeError):
        raise ValueError(
            f"kl direction must be one of {KL_DIRECTIONS} ('ref_theta' = KL(p_ref‖p_θ) as torch "
            f"F.kl_div computes in the article's code; 'theta_ref' = KL(p_θ‖p_ref)), "
            f"got {direction!r}"
        ) from None


def kl_divergence(logits, ref_logits, direction="ref_theta"):
    """KL of ``softmax(logits)`` vs ``softmax(ref_logits)`` in the named direction (scalar)."""
    return resolve_kl_direction(direction)(logits, ref_logits)


# --------------------------------------------------------------------------------------------
# LM log-likelihood (paper)
# --------------------------------------------------------------------------------------------


def paper_loglik(y, pred_logits, nll_coeff=1e-3, mask=None):
    """The paper's LM term: ``nll_coeff * Σ_k mask[k] Σ_v y[k, v] * log_softmax(pred)[k, v]``.

    Args:
      y: ``[K, V]`` (or ``[..., K, V]``) token choices, typically ``st_softmax(Z)`` one-hots.
      pred_logits: same shape: the LM's predicted logits for those positions.
      nll_coeff: scalar weight (paper default ``1e-3``).
      mask: optional ``[K]`` (or ``[..., K]``) weights, 1 = counted, 0 = ignored.

    Returns:
      scalar log-likelihood (nats, times ``nll_coeff``; <= 0 for one-hot ``y``).
    """
    y = _floating(y, "y")
    pred_logits = _floating(pred_logits, "pred_logits")
    if y.shape != pred_logits.shape:
        raise ValueError(
            f"y and pred_logits must have the same shape [K, V], got {y.shape} and "
            f"{pred_logits.shape}"
        )
    if y.ndim < 2:
        raise ValueError(f"y must be [K, V] (or [..., K, V]), got shape {y.shape}")
    per_pos = loglik_positions(y, pred_logits)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != y.shape[:-1]:
            raise ValueError(f"mask must have shape {y.shape[:-1]} (y without V), got {mask.shape}")
        per_pos = per_pos * mask.astype(per_pos.dtype)
    return nll_coeff * jnp.sum(per_pos)


def loglik_positions(y, pred_logits):
    """Per-position log-likelihood ``[..., K]``: ``Σ_v y · log_softmax(pred_logits)``.

    The one implementation of the LM term (no checks: traced inside the refinement).

    Args:
      y: ``[..., K, V]`` token choices (straight-through one-hots or soft).
      pred_logits: ``[..., K, V]`` the LM's predicted logits for those positions.
    """
    return jnp.sum(y * jax.nn.log_softmax(pred_logits, axis=-1), axis=-1)


# --------------------------------------------------------------------------------------------
# composite losses
# --------------------------------------------------------------------------------------------


class LossTerms(NamedTuple):
    """Scalar terms of one DTO step (a pytree, so it can ride in a ``lax.scan`` trace).

    Terms a loss form does not use are 0. Units: ``loss`` as minimised; ``reward`` in the RM's
    units; ``loglik`` nats times ``nll_coeff``; ``kl`` nats per first-dim row.
    """

    loss: jax.Array
    reward: jax.Array
    loglik: jax.Array
    kl: jax.Array


def article_loss(reward, kl, lambda_kl):
    """The sketch's loss: ``-reward + lambda_kl * kl`` (scalar)."""
    return -reward + lambda_kl * kl


def paper_loss(loglik, reward, reward_coeff=1.0):
    """The paper's DTO loss: ``-(loglik + reward_coeff * reward)`` (scalar)."""
    return -(loglik + reward_coeff * reward)


def article_terms(reward, kl, lambda_kl) -> LossTerms:
    """:class:`LossTerms` of the article's loss (``loglik = 0``)."""
    reward = jnp.asarray(reward)
    kl = jnp.asarray(kl)
    return LossTerms(article_loss(reward, kl, lambda_kl), reward, jnp.zeros_like(reward), kl)


def paper_terms(loglik, reward, reward_coeff=1.0) -> LossTerms:
    """:class:`LossTerms` of the paper's loss (``kl = 0``)."""
    loglik = jnp.asarray(loglik)
    reward = jnp.asarray(reward)
    return LossTerms(
        paper_loss(loglik, reward, reward_coeff), reward, loglik, jnp.zeros_like(loglik)
    )
