"""The paper's DTO optimizer as an optax transformation with injected (traced) hyperparameters.

:func:`paper_optimizer` is torch's ``Adam`` (L2 weight decay added to the gradient before the
moments) or ``AdamW`` (decoupled decay), times the schedule of ``DTOConfig`` (cosine / linear /
constant after a linear warmup, floored at ``min_lr_ratio``). It is built with
``optax.inject_hyperparams``: the learning rate, decay, moments, warmup and floor live in the
optimizer's state as arrays, so they may be traced values — a ``jax.vmap`` over learning rates is
one compiled program — and can be read back (``state.hyperparams``).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from nabla_jax.dto_config import DTOConfig, DTOHyper

__all__ = ["paper_optimizer"]


def paper_optimizer(cfg: DTOConfig, hyper: DTOHyper | None = None) -> optax.GradientTransformation:
    """The DTO optimizer of ``cfg`` with its numbers from ``hyper`` (default ``cfg.hyper()``).

    Args:
      cfg: the structure: ``optimizer`` ("adam" = L2, "adamw" = decoupled), ``schedule``,
        ``num_steps``.
      hyper: the numbers (float32 scalars, possibly traced): learning_rate, weight_decay, b1,
        b2, eps, warmup (steps), min_lr_ratio.

    Returns:
      an ``optax.GradientTransformation`` whose state carries those numbers (``hyperparams``).
    """
    h = cfg.hyper() if hyper is None else hyper

    def build(learning_rate, weight_decay, b1, b2, eps, warmup, min_lr_ratio):
        def lr_at(step):
            return learning_rate * cfg.schedule_multiplier(step, warmup, min_lr_ratio)

        adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
        lr = optax.scale_by_learning_rate(lr_at)
        if cfg.optimizer == "adam":
            # torch Adam: grad += wd·param before the moments (L2 regularisation).
            return optax.chain(optax.add_decayed_weights(weight_decay), adam, lr)
        return optax.chain(adam, optax.add_decayed_weights(weight_decay), lr)

    # float32 hyperparameters whatever the window's dtype (a bfloat16 window keeps bfloat16
    # moments, but its learning rate and eps are not rounded to bfloat16).
    return optax.inject_hyperparams(build, hyperparam_dtype=jnp.float32)(
        learning_rate=h.learning_rate,
        weight_decay=h.weight_decay,
        b1=h.b1,
        b2=h.b2,
        eps=h.eps,
        warmup=h.warmup,
        min_lr_ratio=h.min_lr_ratio,
    )
