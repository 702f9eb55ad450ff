"""The application layer: the ``nabla-jax`` command line (:mod:`~nabla_jax.app.cli`), run configs
(:mod:`~nabla_jax.app.config_io`), the bundled default (:mod:`~nabla_jax.app.bundled`), the
demo, the accuracy benchmark (:mod:`~nabla_jax.app.evaluation`), the revision view and the
statistics of results. It imports every layer below it; nothing below imports it."""

__all__: list[str] = []
