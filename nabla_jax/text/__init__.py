"""The text layer, at the bottom: chat-template rendering (:mod:`~nabla_jax.text.templates`),
vocabulary checks and cross-tokenizer alignment (:mod:`~nabla_jax.text.vocab`), and the bundled
byte-level BPE tokenizer (:mod:`~nabla_jax.text.tokenizer`). It imports nothing else of
nabla-jax."""

__all__: list[str] = []
