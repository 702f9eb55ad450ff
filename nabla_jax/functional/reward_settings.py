"""The reward-model settings a run config may carry under ``models:``, checked before any load.

* ``rm_vocab``: ``shared`` | ``by_string`` (:data:`nabla_jax.text.vocab_map.RM_VOCAB_MODES`);
  unset: :func:`nabla_jax.text.vocab_map.resolve_rm_vocab` picks it from the two tokenizers.
* ``rm_steps``: read the RM per step (a process reward model), a mapping of

  - ``layout``: :data:`nabla_jax.models.prm.PRM_LAYOUTS` (default: from the checkpoint's
    ``architectures``);
  - ``aggregate``: :data:`nabla_jax.functional.step_scores.AGGREGATIONS` (required);
  - ``temperature``: the soft minimum's τ (> 0): required with ``aggregate: soft_min``; with
    ``aggregate: min`` it is the τ of the soft minimum that stands in for the minimum where a
    gradient is taken (DTO's reward), the hard minimum serving everywhere else; refused with
    the other aggregations;
  - ``separator``: the token the PRM reads steps at, inserted into the RM's input only
    (default: ``<extra_0>`` for ``math_prm``; the task's step ends otherwise).
"""

from __future__ import annotations

from typing import Any

from nabla_jax.functional.step_scores import AGGREGATIONS
from nabla_jax.models.prm import PRM_LAYOUTS
from nabla_jax.text.vocab_map import RM_VOCAB_MODES

__all__ = ["REWARD_MODEL_KEYS", "RM_STEPS_KEYS", "check_reward_settings"]

#: Keys of ``models:`` that configure how the reward model is read.
REWARD_MODEL_KEYS: tuple[str, ...] = ("rm_vocab", "rm_steps")
RM_STEPS_KEYS: tuple[str, ...] = ("layout", "aggregate", "temperature", "separator")


def check_reward_settings(models: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one line, naming the key and the valid values) unless the
    ``rm_vocab`` / ``rm_steps`` entries of a ``models:`` mapping are valid; absent is valid."""
    mode = models.get("rm_vocab")
    if mode is not None and mode not in RM_VOCAB_MODES:
        raise ValueError(
            f"models.rm_vocab must be one of {', '.join(RM_VOCAB_MODES)}, got {mode!r}"
        )
    steps = models.get("rm_steps")
    if steps is None:
        return
    if not isinstance(steps, dict):
        raise ValueError(f"models.rm_steps must be a mapping of {', '.join(RM_STEPS_KEYS)}")
    unknown = sorted(set(steps) - set(RM_STEPS_KEYS))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in models.rm_steps; valid keys: {', '.join(RM_STEPS_KEYS)}"
        )
    layout = steps.get("layout")
    if layout is not None and layout not in PRM_LAYOUTS:
        raise ValueError(
            f"models.rm_steps.layout must be one of {', '.join(PRM_LAYOUTS)}, got {layout!r}"
        )
    how = steps.get("aggregate")
    if how not in AGGREGATIONS:
        raise ValueError(
            f"models.rm_steps.aggregate must be one of {', '.join(AGGREGATIONS)}, got {how!r}"
        )
    t = steps.get("temperature")
    if how in ("min", "soft_min") and (t is not None or how == "soft_min"):
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(
                f"models.rm_steps.temperature must be a number > 0 for {how}, got {t!r}"
            )
    elif t is not None:
        raise ValueError(
            f"models.rm_steps.temperature applies to min and soft_min only, not {how!r}"
        )
    sep = steps.get("separator")
    if sep is not None and (not isinstance(sep, str) or not sep):
        raise ValueError(f"models.rm_steps.separator must be a token string, got {sep!r}")
