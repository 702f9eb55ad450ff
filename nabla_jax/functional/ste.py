"""Straight-through estimators (STE) over logits, as JAX custom VJPs.

Two estimators turn continuous logits ``z [..., V]`` into a discrete one-hot token choice whose
forward value is exact and whose backward pass is a surrogate:

* :func:`ste_argmax` (the article's sketch): forward ``one_hot(argmax z)``, backward identity.
* :func:`st_softmax` (the paper's DTO): forward ``one_hot(argmax y_soft)`` with
  ``y_soft = softmax((z + gumbel_scale * g) / tau)``, backward the gradient of ``y_soft``.

Feeding a one-hot into a model means ``one_hot @ E`` for an embedding table ``E [V, D]``. Done
densely that is a ``[..., V] @ [V, D]`` matmul in the forward pass; :func:`ste_argmax_embed` and
:func:`st_softmax_embed` instead *gather* ``E[argmax]`` forward (O(D) per position) and pay the
matmul only in the backward pass (``dz = g @ E.T``), with ``dE`` accumulated by a scatter-add.
Values and gradients equal those of the dense composition (the gather is bit-exact; on accelerators
it is even more exact than a TF32 matmul).

Ties in ``argmax`` resolve to the lowest index (as ``jnp.argmax`` and ``torch.argmax`` do).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ste_argmax",
    "st_softmax",
    "ste_argmax_embed",
    "st_softmax_embed",
    "gumbel_noise",
]


# --------------------------------------------------------------------------------------------
# input checks (shapes and dtypes are static, so these run before any compute, even under jit)
# --------------------------------------------------------------------------------------------


def _check_logits(z, name: str = "z"):
    z = jnp.asarray(z)
    if z.ndim < 1:
        raise ValueError(
            f"{name} must have a vocabulary axis: expected shape [..., V], got a scalar"
        )
    if z.shape[-1] < 1:
        raise ValueError(f"{name} has an empty vocabulary axis (shape {z.shape}); V must be >= 1")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array of logits, got dtype {z.dtype}; "
            "cast it (e.g. z.astype(jnp.float32)) before calling"
        )
    return z


def _check_embed(z, embed):
    embed = jnp.asarray(embed)
    if embed.ndim != 2:
        raise ValueError(f"embed must be an embedding table [V, D], got shape {embed.shape}")
    if embed.shape[0] != z.shape[-1]:
        raise ValueError(
            f"vocabulary mismatch: logits have V={z.shape[-1]} (shape {z.shape}) but the embedding "
            f"table has {embed.shape[0]} rows (shape {embed.shape}); align the vocabularies first"
        )
    if not jnp.issubdtype(embed.dtype, jnp.floating):
        raise TypeError(f"embed must be floating-point, got dtype {embed.dtype}")
    return embed


def _concrete_scalar(x, name: str):
    """Return ``x`` as a Python float when it is concrete, ``None`` when it is traced."""
    if isinstance(x, jax.core.Tracer):
        if jnp.ndim(x) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(x)}")
        return None
    arr = np.asarray(x)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real number, got {x!r}")
    return float(arr)


def _check_tau(tau):
    t = _concrete_scalar(tau, "tau")
    if t is not None and not (np.isfinite(t) and t > 0.0):
        raise ValueError(f"tau (softmax temperature) must be finite and > 0, got {t}")


def _check_gumbel(key, gumbel_scale) -> bool:
    """Validate the noise settings; return whether noise must be drawn."""
    s = _concrete_scalar(gumbel_scale, "gumbel_scale")
    if s is not None and not (np.isfinite(s) and s >= 0.0):
        raise ValueError(f"gumbel_scale must be finite and >= 0, got {s}")
    if key is None:
        if s is not None and s > 0.0:
            raise ValueError(
                f"gumbel_scale={s} > 0 needs a jax.random key (key=None); pass key=... "
                "or set gumbel_scale=0.0 for noise-free straight-through softmax"
            )
        return False
    # A traced scale may be zero or not at run time: draw the noise (scaled by it) to be safe.
    return s is None or s > 0.0


def _one_hot_argmax(x):
    """``x [..., V]`` -> ``one_hot(argmax x, V)`` in ``x.dtype``; ties take the lowest index."""
    return jax.nn.one_hot(jnp.argmax(x, axis=-1), x.shape[-1], dtype=x.dtype)


# --------------------------------------------------------------------------------------------
# ste_argmax: one_hot(argmax z) forward, identity backward
# --------------------------------------------------------------------------------------------


@jax.custom_vjp
def _ste_argmax(z):
    return _one_hot_argmax(z)


def _ste_argmax_fwd(z):
    return _one_hot_argmax(z), None


def _ste_argmax_bwd(_, g):
    return (g,)


_ste_argmax.defvjp(_ste_argmax_fwd, _ste_argmax_bwd)


def ste_argmax(z):
    """Straight-through argmax (the article's ``STEArgmax``).

    Args:
      z: logits ``[..., V]`` (floating point, any leading dims, e.g. ``[T, V]`` or ``[B, T, V]``).

    Returns:
      ``one_hot(argmax(z, -1), V)`` of shape ``[..., V]`` and dtype ``z.dtype``; exactly 0/1.
      Backward: the cotangent passes through unchanged, ``dz = g`` (identity), so
      ``grad(lambda z: sum(w * ste_argmax(z)))(z) == w``.
    """
    z = _check_logits(z)
    return _ste_argmax(z)


# --------------------------------------------------------------------------------------------
# st_softmax: hard straight-through (Gumbel-)softmax
# --------------------------------------------------------------------------------------------


def gumbel_noise(key, shape, dtype=jnp.float32):
    """Standard Gumbel noise ``g = -log(-log(u))``, ``u ~ U(0, 1)``, of ``shape`` and ``dtype``.

    This is exactly the noise :func:`st_softmax` adds (``z + gumbel_scale * g``) for a given
    ``key``, exposed so reference implementations can be fed the same sample.
    """
    return jax.random.gumbel(key, shape, dtype=dtype)


def _soft(z, tau, key, gumbel_scale):
    """``y_soft [..., V] = softmax((z + gumbel_scale * g) / tau)`` (noise only when requested)."""
    if _check_gumbel(key, gumbel_scale):
        z = z + jnp.asarray(gumbel_scale, z.dtype) * gumbel_noise(key, z.shape, z.dtype)
    return jax.nn.softmax(z / jnp.asarray(tau, z.dtype), axis=-1)


def _hard_from_soft(y_soft):
    """Forward ``one_hot(argmax y_soft)`` exactly; gradient that of ``y_soft``.

    ``y_soft - stop_gradient(y_soft)`` is exactly 0 for finite values, so the forward value is the
    one-hot bit for bit (unlike ``y_hard - sg(y_soft) + y_soft``, whose ``1 - s + s`` may round).
    """
    return _one_hot_argmax(y_soft) + (y_soft - jax.lax.stop_gradient(y_soft))


def st_softmax(z, tau=1.0, hard=True, key=None, gumbel_scale=0.0):
    """Straight-through (Gumbel-)softmax, the paper's DTO relaxation.

    ``y_soft = softmax((z + gumbel_scale * g) / tau)`` with ``g = gumbel_noise(key, z.shape)`` when
    ``key`` is given and ``gumbel_scale > 0``; no noise otherwise.

    Args:
      z: logits ``[..., V]``, floating point.
      tau: softmax temperature, scalar > 0 (dimensionless).
      hard: ``True`` -> forward value ``one_hot(argmax y_soft)`` (exact 0/1, dtype ``z.dtype``) with
        the gradient of ``y_soft``; ``False`` -> ``y_soft`` itself.
      key: ``jax.random`` key for the Gumbel noise, or ``None``.
      gumbel_scale: scale of the Gumbel noise, scalar >= 0. ``> 0`` with ``key=None`` is an error.

    Returns:
      ``[..., V]`` array of ``z.dtype``. Backward (hard): ``dz = softmax_vjp(y_soft, g) / tau``.

    Raises:
      ValueError: ``tau <= 0``, ``gumbel_scale < 0``, ``gumbel_scale > 0`` without a key, bad shape.
      TypeError: non-floating ``z``.
    """
    z = _check_logits(z)
    _check_tau(tau)
    y_soft = _soft(z, tau, key, gumbel_scale)
    return _hard_from_soft(y_soft) if hard else y_soft


# --------------------------------------------------------------------------------------------
# one-hot embedding: gather forward, matmul backward
# --------------------------------------------------------------------------------------------


@jax.custom_vjp
def _argmax_embed(x, embed):
    """``E[argmax x]``: ``x [..., V]``, ``embed [V, D]`` -> ``[..., D]`` (a gather, no matmul)."""
    return _gather_rows(embed, jnp.argmax(x, axis=-1))


def _gather_rows(embed, idx):
    """``embed [V, D]``, ``idx [...]`` (argmax output, always in ``[0, V)``) -> ``[..., D]``."""
    return embed.at[idx].get(mode="promise_in_bounds")


def _argmax_embed_fwd(x, embed):
    idx = jnp.argmax(x, axis=-1)
    # A 0-d zero carries x's dtype (residuals must be arrays); it costs nothing.
    return _gather_rows(embed, idx), (idx, embed, jnp.zeros((), x.dtype))


def _argmax_embed_bwd(res, g):
    """``g [..., D]`` -> ``(dx [..., V], dE [V, D])`` of ``one_hot(argmax x) @ E`` with identity
    backward through the one-hot: ``dx = g @ E.T``; ``dE = one_hot.T @ g`` as a scatter-add."""
    idx, embed, x_zero = res
    dx = jnp.einsum("...d,vd->...v", g, embed).astype(x_zero.dtype)
    d = embed.shape[1]
    dembed = jax.ops.segment_sum(
        g.reshape(-1, d), idx.reshape(-1), num_segments=embed.shape[0]
    ).astype(embed.dtype)
    return dx, dembed


_argmax_embed.defvjp(_argmax_embed_fwd, _argmax_embed_bwd)


def ste_argmax_embed(z, embed, *, return_onehot=False):
    """Embedding of the straight-through argmax: equals ``ste_argmax(z) @ embed`` in value and grad.

    Args:
      z: logits ``[..., V]`` (e.g. ``[T, V]``), floating point.
      embed: input embedding table ``[V, D]``.
      return_onehot: also return ``ste_argmax(z)`` ``[..., V]`` (e.g. for a log-likelihood term).

    Returns:
      ``emb [..., D]`` (dtype ``embed.dtype``) = ``embed[argmax z]``, computed by a gather.
      Backward: ``dz = g @ embed.T`` (``[..., D] @ [D, V]``), ``d embed = one_hot.T @ g``
      computed by a scatter-add (segment sum over the chosen rows).
      With ``return_onehot``: ``(emb, onehot)``.
    """
    z = _check_logits(z)
    embed = _check_embed(z, embed)
    emb = _argmax_embed(z, embed)
    return (emb, _ste_argmax(z)) if return_onehot else emb


def st_softmax_embed(z, embed, tau=1.0, key=None, gumbel_scale=0.0, *, return_y=False):
    """Embedding of the hard straight-through softmax: equals ``st_softmax(z, ...) @ embed``.

    Args:
      z: logits ``[..., V]``, floating point.
      embed: input embedding table ``[V, D]``.
      tau, key, gumbel_scale: as in :func:`st_softmax` (hard=True).
      return_y: also return ``y = st_softmax(z, tau, True, key, gumbel_scale)`` ``[..., V]``,
        sharing the same noise and soft probabilities (the paper's LM log-likelihood term needs it).

    Returns:
      ``emb [..., D]`` (dtype ``embed.dtype``) = ``embed[argmax y_soft]`` by a gather. Backward:
      ``dz = softmax_vjp(y_soft, g @ embed.T) / tau``; ``d embed`` by scatter-add.
      With ``return_y``: ``(emb, y)``.
    """
    z = _check_logits(z)
    embed = _check_embed(z, embed)
    _check_tau(tau)
    y_soft = _soft(z, tau, key, gumbel_scale)
    emb = _argmax_embed(y_soft, embed)
    return (emb, _hard_from_soft(y_soft)) if return_y else emb
