"""The paper's DTO optimizer as an optax transformation with injected (traced) hyperparameters.

:func:`paper_optimizer` is torch's ``Adam`` (L2 weight decay added to the gradient before the
moments) or ``AdamW`` (decoupled decay), times the schedule of ``DTOConfig`` (cosine / linear /
constant after a linear warmup, floored at ``min_lr_ratio``). It is built with
``optax.inject_hyperparams``: the learning rate, decay, moments, warmup and floor live in the
optimizer's state as arrays, so they may be traced values — a ``jax.vmap`` over learning rates is
one compiled program — and can be read back (``state.hyperparams``).

Its Adam is optax's ``scale_by_adam`` arithmetic with one change that leaves every value as it
is: the square root of the second moment has a derivative of 0 where the moment is 0 (entries
whose gradient is masked, such as window positions that do not move). With a plain ``sqrt``, a
derivative *through* the refinement (``jax.grad`` with respect to the learning rate, say) is
``0 · ∞ = NaN`` there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from nabla_jax.functional.dto_config import DTOConfig, DTOHyper, DTOProgram

__all__ = ["paper_optimizer", "scale_by_adam"]


@jax.custom_jvp
def _sqrt(x):
    return jnp.sqrt(x)


@_sqrt.defjvp
def _sqrt_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    root = jnp.sqrt(x)
    return root, jnp.where(x > 0, t * 0.5 / jnp.where(x > 0, root, 1.0), jnp.zeros_like(t))


def scale_by_adam(b1, b2, eps) -> optax.GradientTransformation:
    """Adam's moment scaling, as ``optax.scale_by_adam`` (same state, same values), with a square
    root whose derivative at 0 is 0 (so the refinement can be differentiated)."""

    def init(params):
        zeros = optax.tree.zeros_like(params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        out = jax.tree.map(lambda m, v: m / (_sqrt(v) + eps), mu_hat, nu_hat)
        nu = optax.tree.cast_like(nu, state.nu)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def paper_optimizer(
    cfg: DTOConfig | DTOProgram, hyper: DTOHyper | None = None
) -> optax.GradientTransformation:
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

        adam = scale_by_adam(b1, b2, eps)
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
