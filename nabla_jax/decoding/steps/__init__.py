"""The steps of one ∇-Reasoner iteration, one module each, in the order the loop runs them.

:mod:`~nabla_jax.decoding.steps.select` → :mod:`~nabla_jax.decoding.steps.refine` →
:mod:`~nabla_jax.decoding.steps.resample` → :mod:`~nabla_jax.decoding.steps.rollout` →
:mod:`~nabla_jax.decoding.steps.score` → :mod:`~nabla_jax.decoding.steps.accept` →
:mod:`~nabla_jax.decoding.steps.commit`. Each is a traceable function of the loop's
:class:`~nabla_jax.decoding.state.RowState` and the earlier steps' results (NamedTuples), with
per-row masks instead of Python control flow; :func:`nabla_jax.decoding.loop.iteration`
composes them.
"""

__all__: list[str] = []  # the steps are imported from their modules
