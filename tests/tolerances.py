"""Tolerances derived from float32 rounding, not fitted to one machine.

Two computations of the same mathematics — JAX against its PyTorch twin, a batched program
against the one-row program, one core against two — differ only in the order their reductions
run and in the last bits of their transcendental functions. Two bounds cover every comparison
in the suite:

* **Closed form (short computations).** A sum or dot product of ``n`` float32 terms, evaluated in
  any order, is within ``gamma(n) · Σ|terms|`` of the exact value (Higham, *Accuracy and
  Stability of Numerical Algorithms*, §3.1), so two orders are within twice that.
  ``exp``/``log``/``tanh`` add a few ulps each (XLA's and PyTorch's CPU kernels are accurate
  to ≤ 4 ulps: :data:`ULPS_PER_TRANSCENDENTAL`). :func:`reduction_bound` applies this.

* **Backward-error ball (deep computations: a transformer, a multi-step refinement).** The
  classical backward-error result for a reordered dot product of length ``n`` says: the
  computed value is the *exact* value for inputs perturbed elementwise by at most
  ``gamma(n)`` relative. So every reduction order the hardware may choose lies inside a ball
  of relative radius ``gamma(n)`` around the weights, with ``n`` the longest contraction of
  the model. How far the output moves inside that ball is the computation's own sensitivity,
  which no closed form gives for Adam steps on near-zero gradients (Adam divides by the
  gradient's running size, so rounding noise on a near-zero entry is amplified up to
  ``lr / eps``). :func:`ball_sensitivity` measures it by re-running the reference
  computation with the weights at random points of that ball (stochastic arithmetic, as in
  Vignes' CESTAC method); a comparison then allows :data:`BALL_SAFETY` times the largest
  deviation seen, plus the closed-form floor of the output's own rounding.

Both hold on any x86 CPU, any core count: they depend on the computation's shapes and values,
never on one run's observed difference.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

#: float32 unit roundoff (round to nearest): 2^-24.
U32 = 2.0**-24

#: ulps of error of one exp / log / tanh / rsqrt evaluation in XLA's and PyTorch's CPU kernels.
ULPS_PER_TRANSCENDENTAL = 4

#: float32's smallest normal number: below it, values underflow to subnormals or 0 (Higham's
#: absolute error term of each operation), so a float32 result cannot match a float64 value
#: closer than this. The floor of every comparison against a float64 reference.
TINY32 = 2.0**-126

#: Perturbed re-runs per :func:`ball_sensitivity` call.
BALL_SAMPLES = 3

#: A reorder is one point of the ball, its twin another: their distance is up to the ball's
#: diameter (2×), and a random point reaches less far than the worst direction does; 8× the
#: largest of three random deviations covers both with margin.
BALL_SAFETY = 8.0


def gamma(n: int) -> float:
    """Higham's ``γ_n = n·u / (1 − n·u)``: relative error bound of an ``n``-term float32 sum."""
    nu = n * U32
    assert nu < 0.5, f"γ_{n} is not small in float32: the bound does not apply"
    return nu / (1.0 - nu)


def reduction_bound(abs_sum, n: int, transcendentals: int = 0) -> float:
    """Bound on ``|a − b|`` for two evaluations of an ``n``-term reduction whose terms have
    ``abs_sum = Σ|term|``, each term carrying ``transcendentals`` exp/log evaluations:
    ``2·(γ_n + transcendentals·ULPS·u)·Σ|terms|``."""
    per_term = transcendentals * ULPS_PER_TRANSCENDENTAL * U32
    return float(2.0 * (gamma(n) + per_term) * float(abs_sum))


def longest_contraction(*models, extra: int = 0) -> int:
    """The longest reduction of a forward/backward pass of these models: hidden width, MLP
    width and vocabulary (the straight-through embedding ``y @ E`` contracts over V), or
    ``extra`` — the longest sequence the test attends over — whichever is largest."""
    n = extra
    for m in models:
        c = m.config
        n = max(n, c.hidden_size, c.intermediate_size or 0, c.vocab_size)
    return int(n)


def perturb(tree, rel: float, key):
    """Every floating leaf of ``tree`` times ``1 + rel·ξ``, ξ uniform in [−1, 1] (one point of
    the backward-error ball of relative radius ``rel``)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    out = []
    for leaf, k in zip(leaves, keys):
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            xi = jax.random.uniform(k, jnp.shape(leaf), jnp.float32, -1.0, 1.0)
            leaf = (leaf * (1.0 + rel * xi)).astype(jnp.asarray(leaf).dtype)
        out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def perturb_torch(models, rel: float, key):
    """:func:`perturb` for PyTorch modules (a module or a tuple of them): deep copies whose
    floating parameters are scaled by ``1 + rel·ξ`` (ξ uniform in [−1, 1], seeded by ``key``)."""
    import copy

    import torch

    seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1])
    gen = torch.Generator().manual_seed(seed)
    ms = models if isinstance(models, tuple) else (models,)
    out = []
    for m in ms:
        m = copy.deepcopy(m)
        with torch.no_grad():
            for prm in m.parameters():
                if prm.is_floating_point():
                    xi = torch.rand(prm.shape, generator=gen, dtype=prm.dtype) * 2 - 1
                    prm.mul_(1 + rel * xi)
        out.append(m)
    return tuple(out) if isinstance(models, tuple) else out[0]


def ball_sensitivity(run: Callable, models, rel: float, samples: int = BALL_SAMPLES,
                     perturb_fn: Callable = perturb):  # fmt: skip
    """Largest ``|run(perturbed) − run(models)|`` over ``samples`` random points of the ball.

    Args:
      run: ``models -> array`` or a tuple of arrays (the reference computation; its inputs
        other than the weights are closed over and exact).
      models: the pytree of weights (a model, a tuple of models).
      rel: the ball's relative radius (``gamma(longest_contraction(...))``).
      perturb_fn: :func:`perturb` (JAX pytrees) or :func:`perturb_torch` (torch modules).
    Returns:
      ``(base, worst)``: the unperturbed output and the elementwise maximum deviation, as
      float64 arrays (tuples of them when ``run`` returns a tuple).
    """
    as_tuple = lambda out: tuple(out) if isinstance(out, tuple) else (out,)  # noqa: E731
    base = [np.asarray(x, np.float64) for x in as_tuple(run(models))]
    worst = [np.zeros_like(b) for b in base]
    for s in range(samples):
        out = as_tuple(run(perturb_fn(models, rel, jax.random.key(1000 + s))))
        worst = [np.maximum(w, np.abs(np.asarray(o, np.float64) - b))
                 for w, o, b in zip(worst, out, base)]  # fmt: skip
    if len(base) == 1:
        return base[0], worst[0]
    return tuple(base), tuple(worst)


def ball_tolerance(run: Callable, models, rel: float, floor_n, perturb_fn: Callable = perturb):
    """Max-norm tolerance for comparing ``run(models)`` with another evaluation order of it:
    ``BALL_SAFETY ×`` the ball's largest deviation, plus ``reduction_bound`` of the output's
    magnitude over ``floor_n`` terms (so an insensitive output still has its own rounding).
    A tuple of outputs (with a tuple of ``floor_n``, or one for all) gives a tuple of
    tolerances."""
    base, worst = ball_sensitivity(run, models, rel, perturb_fn=perturb_fn)
    if not isinstance(base, tuple):
        return BALL_SAFETY * float(np.max(worst)) + reduction_bound(np.max(np.abs(base)), floor_n)
    if isinstance(floor_n, int):
        floor_n = (floor_n,) * len(base)
    return tuple(
        BALL_SAFETY * float(np.max(w)) + reduction_bound(np.max(np.abs(b)), n)
        for b, w, n in zip(base, worst, floor_n)
    )


def assert_within(got, want, tol: float, what: str = "values") -> None:
    """``max |got − want| ≤ tol`` with a message naming the error and the bound."""
    err = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
    assert err <= tol, f"{what}: max error {err:.3g} > derived bound {tol:.3g}"


# ---------------------------------------------------------------------------- shared derivations


def sum_bound(terms, transcendentals: int = 0) -> float:
    """:func:`reduction_bound` of a sum over every entry of ``terms`` (float64 values of the
    summands): two evaluations of ``Σ terms`` in any order differ by at most this."""
    terms = np.asarray(terms, np.float64)
    return reduction_bound(np.abs(terms).sum(), max(int(terms.size), 1), transcendentals)


def mean_bound(terms, transcendentals: int = 0) -> float:
    """Two evaluations of ``mean(terms)``: the sum's bound over ``n``, plus the division's own
    rounding (half an ulp of the mean each side)."""
    terms = np.asarray(terms, np.float64)
    n = max(int(terms.size), 1)
    return sum_bound(terms, transcendentals) / n + 2.0 * U32 * abs(float(terms.mean()))


def elementwise_bound(values, ops: int = 1, transcendentals: int = 0) -> float:
    """Two evaluations of an elementwise chain of ``ops`` correctly rounded operations and
    ``transcendentals`` exp/log/tanh calls on each entry: ``2·(ops·u + t·ULPS·u)·max|value|``
    (to first order, each operation adds its relative error to the value it produces)."""
    per = ops * U32 + transcendentals * ULPS_PER_TRANSCENDENTAL * U32
    return float(2.0 * per * np.max(np.abs(np.asarray(values, np.float64))))


def shallow_rel(n: int, transcendentals: int = 0) -> float:
    """Relative radius of the backward-error ball of a short computation whose longest reduction
    has ``n`` terms and whose values pass through ``transcendentals`` exp/log calls."""
    return gamma(n) + transcendentals * ULPS_PER_TRANSCENDENTAL * U32


def assert_ball_close(got, want, run: Callable, inputs, n: int, transcendentals: int = 0,
                      what: str = "values") -> None:  # fmt: skip
    """``got`` and ``want`` are two evaluation orders of ``run(inputs)`` (a gradient, a softmax
    chain: cancellation makes a closed form per entry impractical): within
    :func:`ball_tolerance` of ``run`` on the ball of radius :func:`shallow_rel`\\ ``(n, t)``,
    plus :data:`TINY32` (an underflowed entry is 0 in float32, not the float64 value)."""
    bound = ball_tolerance(run, inputs, shallow_rel(n, transcendentals), n) + TINY32
    assert_within(got, want, bound, what)


def forward_tolerance(run: Callable, models, extra: int = 0) -> float:
    """Max-norm bound for a transformer forward (logits, scores, hidden states) against another
    evaluation order of it (its PyTorch twin, a batched or cached program): the ball of radius
    ``γ(longest contraction)`` around the weights (:func:`ball_tolerance`), with that
    contraction's own rounding of the output as the floor. ``models`` is a model or a tuple of
    them; ``run(models)`` evaluates the JAX program with the test's inputs closed over."""
    ms = models if isinstance(models, tuple) else (models,)
    n = longest_contraction(*ms, extra=extra)
    return ball_tolerance(run, models, gamma(n), n)


def log_softmax_sum_bound(weights, log_probs) -> float:
    """Two evaluations of ``Σ w · log_softmax(x)`` over every entry (rows of width ``V``, the
    last axis; ``weights`` and the exact ``log_probs`` as float64 arrays of one shape).

    ``log_softmax(x)_i = (x_i − m) − log Σ_v exp(x_v − m)``: the inner sum carries ``γ_V`` plus
    an exp's ulps relative, the log turns that into an *absolute* error of the same size plus
    its own ulps of ``|log p|``. So each log-prob is off by at most
    ``γ_V + 2·ULPS·u·(1 + |log p|)``, and the outer sum of ``N`` products adds ``γ_N`` of
    ``Σ|w·log p|``: ``2·[(γ_N + γ_V + 2·ULPS·u)·Σ|w·log p| + (γ_V + 2·ULPS·u)·Σ|w|]``."""
    w = np.asarray(weights, np.float64)
    lp = np.asarray(log_probs, np.float64)
    lp = np.where(w == 0, 0.0, lp)  # xlogy: a zero weight contributes exactly 0
    v = int(lp.shape[-1])
    per_log = gamma(v) + 2 * ULPS_PER_TRANSCENDENTAL * U32
    terms = float(np.abs(w * lp).sum())
    return float(2.0 * ((gamma(max(w.size, 1)) + per_log) * terms + per_log * np.abs(w).sum()))


def softmax64(x, axis=-1):
    """Exact (float64) softmax and log-softmax of ``x``: the value both sides approximate."""
    x = np.asarray(x, np.float64)
    m = np.max(np.where(np.isfinite(x), x, -np.inf), axis=axis, keepdims=True)
    logp = x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return np.exp(logp), logp


def softmax_rel(x) -> float:
    """Relative error bound of one float32 ``softmax(x)`` entry (see :func:`softmax_bound`)."""
    x = np.asarray(x, np.float64)
    finite = np.isfinite(x)
    m = np.max(np.where(finite, x, -np.inf), -1, keepdims=True)
    spread = float(np.max(np.where(finite, np.abs(x - m), 0.0))) if x.size else 0.0
    return gamma(int(x.shape[-1])) + (ULPS_PER_TRANSCENDENTAL + 1) * U32 + 2 * U32 * spread


def softmax_bound(x) -> float:
    """Max-norm bound for two evaluations of ``softmax(x)`` over the last axis (``x`` the
    softmax's argument, float64; a one-hot written as ``y − s + s`` is inside it too).

    Each probability ``exp(x_i − m) / Σ exp(x_v − m)`` carries: the subtraction's (and a
    ``z / τ`` scaling's) rounding of ``x``, which ``exp`` turns into ``2u·|x − m|`` relative;
    ``exp``'s ulps; the sum's ``γ_V``; the division's ``u``."""
    x = np.asarray(x, np.float64)  # −inf entries (filtered out) have p = 0 on both sides
    p, _ = softmax64(x)
    return float(2.0 * softmax_rel(x) * np.max(p))


#: The float fields of a RefineTrace that the models' rounding reaches.
TRACE_FLOATS = ("loss", "reward", "loglik", "kl")


def refine_bounds(lm, rm, cfg, problems, key, batch_size=None, **kw):
    """Derived bounds for another evaluation order of ``refine_batch(problems)`` (its torch
    twin, another batching, a user's jit, a wrapped forward): per row, the :func:`ball_tolerance`
    of the logits and of each float trace field (:data:`TRACE_FLOATS`), measured with
    ``refine_batch`` itself re-run at points of the ``γ(longest contraction)`` ball around the
    weights (the contraction includes the longest sequence the models attend over).

    ``kw`` (``rm_embed=``) goes to ``refine_batch``. Returns ``{"logits": [per row], "loss":
    [per row], ...}``.
    """
    import nabla_jax as nj  # here, not at import: this module is plain numerics otherwise

    n = len(problems)
    extra = max(len(p.lm_prefix_ids) + len(p.rm_prefix_ids) + len(p.rm_suffix_ids)
                + np.shape(p.init)[0] for p in problems)  # fmt: skip
    rel = gamma(longest_contraction(lm, rm, extra=extra))

    def run(ms):
        res = nj.refine_batch(ms[0], ms[1], problems, cfg, key, batch_size=batch_size or n, **kw)
        return tuple(r.logits for r in res) + tuple(
            getattr(r.trace, f) for f in TRACE_FLOATS for r in res
        )

    width = lm.config.vocab_size
    floors = (width,) * n + tuple(width * np.shape(p.init)[0] for p in problems) * len(TRACE_FLOATS)
    bounds = ball_tolerance(run, (lm, rm), rel, floors)
    out = {"logits": bounds[:n]}
    for j, f in enumerate(TRACE_FLOATS):
        out[f] = bounds[n * (j + 1) : n * (j + 2)]
    return out


def torch_forward_tolerance(run: Callable, models, extra: int = 0) -> float:
    """:func:`forward_tolerance` for a computation on PyTorch modules (the twins checked against
    themselves): the same ball, the weights perturbed with :func:`perturb_torch`."""
    ms = models if isinstance(models, tuple) else (models,)
    n = extra
    for m in ms:
        c = m.config
        n = max(n, c.hidden_size, getattr(c, "intermediate_size", 0) or 0, c.vocab_size)
    return ball_tolerance(run, models, gamma(n), n, perturb_fn=perturb_torch)


def kl_bound(target_logits, logits, b, direction="ref_theta"):
    """Two evaluations of ``KL = Σ p·(log p − log q) / b`` (``p`` the target softmax: the
    reference for "ref_theta", ``logits`` for "theta_ref"): both log-softmax sums
    (:func:`log_softmax_sum_bound`); where ``p`` is itself computed (theta_ref) its
    :func:`shallow_rel` error scales ``Σ|p·(log p − log q)|``; the division by ``b`` adds half an
    ulp of the result each side."""
    if direction == "theta_ref":
        target_logits, logits = logits, target_logits
    p, logp = softmax64(target_logits)
    _, logq = softmax64(logits)
    v = p.shape[-1]
    lp = np.where(p == 0, 0.0, logp - logq)
    both = log_softmax_sum_bound(p, logp) + log_softmax_sum_bound(p, logq)
    own_p = 2 * shallow_rel(v, 1) * float(np.abs(p * lp).sum())
    return (both + own_p) / b + 2 * U32 * abs(float((p * lp).sum() / b))
