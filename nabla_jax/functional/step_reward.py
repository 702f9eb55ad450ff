"""A process reward model read as one reward per response: its scores at the step ends,
aggregated — the reward of acceptance tests, Best-of-N, weighted Best-of-N, the tree searches'
node values and DTO when a run reads its reward model per step (``models.rm_steps``).

Where steps end, in the reward model's input:

* **task step ends** (no separator): every response token whose text contains the task's
  step delimiter (``"\\n"`` for the arithmetic task, ``"\\n\\n"`` for MATH), and the response's
  last token — the last step has no delimiter after it.
* **a separator token** (``math_prm``: ``<extra_0>``): the LM's step-delimiter tokens reach the
  reward model as the separator (Qwen2.5-Math-PRM's card joins the steps with it in place of
  ``"\\n\\n"``), and one more separator closes the last step. The LM's response never holds it.
  A delimiter token that carries other text (``".\\n\\n"``) is replaced whole.

The input is the RM template's prefix ++ the response (++ the closing separator). The template's
suffix is left out: under causal attention no step end sees it.

In DTO the reward aggregates the steps of the window and of the rollout after it. The committed
steps before the window are constants of the optimization: their scores do not depend on the
window, and they sit in the prefix's cached keys/values, which are not run again. With
``aggregate="min"`` and a ``temperature``, DTO differentiates the soft minimum
(:func:`~nabla_jax.functional.step_scores.soft_min_steps`) while every test and ranking uses the
hard minimum; the temperature is an array leaf, so changing it does not recompile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.functional.step_scores import AGGREGATIONS, aggregate_steps
from nabla_jax.functional.vocab_map import RMVocabulary
from nabla_jax.models.model import last_valid_index
from nabla_jax.models.prm import ProcessRewardModel
from nabla_jax.runtime.rows import take_at
from nabla_jax.text.vocab_map import VocabCoverage, VocabMap

__all__ = [
    "StepReward",
    "lm_step_end_ids",
    "response_reward",
    "rm_frame",
    "separator_vocabulary",
    "step_reward",
]


def lm_step_end_ids(tokenizer, step_end: str) -> tuple[int, ...]:
    """Ids of ``tokenizer`` whose decoded text contains ``step_end`` (sorted)."""
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    return tuple(i for i, t in enumerate(texts) if step_end in t)


@jax.tree_util.register_pytree_node_class
class StepReward:
    """A :class:`~nabla_jax.models.prm.ProcessRewardModel` with the rule that reads it as one
    reward; a pytree (leaves: the PRM's weights and the temperature). It stands wherever a
    ``RewardModel`` does (``forward``, ``init_cache``, ``embed``, ``config``, ``tokenizer``).

    Attributes:
      prm: the process reward model.
      aggregate: one of :data:`~nabla_jax.functional.step_scores.AGGREGATIONS`.
      temperature: float32 scalar array, the soft minimum's τ (``soft_min``; ``min`` in DTO), or
        None.
      step_end: the task's step delimiter (text).
      rm_end_ids: RM ids that end a step (the separator alone when there is one).
      lm_end_ids: LM ids that end a step (set by :meth:`bound_to`; DTO reads them in the
        window), or None.
    """

    def __init__(self, prm, aggregate, temperature, step_end, rm_end_ids, lm_end_ids=None):
        self.prm, self.aggregate, self.temperature = prm, aggregate, temperature
        self.step_end, self.rm_end_ids, self.lm_end_ids = step_end, rm_end_ids, lm_end_ids

    def tree_flatten(self):
        aux = (self.aggregate, self.step_end, self.rm_end_ids, self.lm_end_ids)
        return (self.prm, self.temperature), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], aux[0], children[1], *aux[1:])

    def __repr__(self):
        sep = f", separator={self.separator_id}" if self.separator_id is not None else ""
        return (
            f"StepReward({self.prm.layout}, aggregate={self.aggregate}, "
            f"step_end={self.step_end!r}{sep})"
        )

    # -- what a RewardModel offers ------------------------------------------------------------
    @property
    def config(self):
        return self.prm.backbone.config

    @property
    def tokenizer(self):
        return self.prm.backbone.tokenizer

    @property
    def dtype(self):
        return self.prm.backbone.dtype

    @property
    def family(self):
        return self.prm.backbone.family

    @property
    def separator_id(self):
        return self.prm.separator_id

    def embed_matrix(self):
        return self.prm.backbone.embed_matrix()

    def embed(self, input_ids):
        return self.prm.backbone.embed(input_ids)

    def init_cache(self, batch: int, max_len: int):
        return self.prm.backbone.init_cache(batch, max_len)

    def forward(self, *args, **kwargs):
        return self.prm.backbone.forward(*args, **kwargs)

    def hidden_states(self, *args, **kwargs):
        return self.prm.backbone.hidden_states(*args, **kwargs)

    # -- reading steps ------------------------------------------------------------------------
    def bound_to(self, lm_tokenizer) -> StepReward:
        """This reward with the LM's step-end ids (what DTO reads in a window of LM tokens)."""
        ends = lm_step_end_ids(lm_tokenizer, self.step_end)
        return StepReward(self.prm, self.aggregate, self.temperature, self.step_end,
                          self.rm_end_ids, ends)  # fmt: skip

    def rm_ends(self, ids):
        """``[B, T]`` bool: RM ids that end a step."""
        return jnp.isin(ids, jnp.asarray(self.rm_end_ids, jnp.int32))

    def lm_ends(self, ids):
        """``[B, T]`` bool: LM ids that end a step (needs :meth:`bound_to`)."""
        if self.lm_end_ids is None:
            raise ValueError(
                "this StepReward does not know the LM's step-end tokens: use "
                "reward.bound_to(lm.tokenizer) (the decoder does)"
            )
        return jnp.isin(ids, jnp.asarray(self.lm_end_ids or (-1,), jnp.int32))

    def end_mask(self, ids, mask, start=0):
        """Step ends ``[B, T]`` bool of RM inputs ``ids``/``mask [B, T]`` whose response starts
        at slot ``start`` (scalar or ``[B]``): delimiter tokens there, and the last real one."""
        t = ids.shape[1]
        slots = jnp.arange(t)[None, :]
        real = (mask > 0) & (slots >= jnp.reshape(jnp.asarray(start), (-1, 1)))
        last = slots == last_valid_index(mask)[:, None]
        return real & (self.rm_ends(ids) | last)

    def reward_of_hidden(self, hidden, ends, *, for_gradient: bool = False):
        """One reward ``[B]`` float32 from backbone hidden states ``[B, T, H]`` and step ends
        ``[B, T]``; ``for_gradient`` takes the soft minimum for ``min`` (with a temperature)."""
        scores = self.prm.scores_of_hidden(hidden)
        how, tau = self.aggregate, self.temperature
        if how == "min":
            how, tau = ("soft_min", tau) if (for_gradient and tau is not None) else ("min", None)
        return aggregate_steps(scores, ends.astype(jnp.int32), how, temperature=tau)

    def frame_suffix(self) -> list[int]:
        """What follows the response in the RM's input: the closing separator, or nothing."""
        return [] if self.separator_id is None else [int(self.separator_id)]


def step_reward(prm, aggregate: str, *, step_end: str = "\n", temperature=None) -> StepReward:
    """A :class:`StepReward`: read ``prm`` at the step ends and aggregate (checked here).

    Args:
      prm: a :class:`~nabla_jax.models.prm.ProcessRewardModel` with its tokenizer.
      aggregate: ``last``, ``min``, ``product``, ``mean`` or ``soft_min``.
      step_end: the task's step delimiter (``"\\n"``; ``"\\n\\n"`` for MATH).
      temperature: τ > 0 of ``soft_min`` (required), or of the soft minimum DTO differentiates
        with ``min`` (optional: without it DTO takes the hard minimum's gradient).
    """
    if not isinstance(prm, ProcessRewardModel):
        raise TypeError(
            "step_reward reads a ProcessRewardModel (nj.load_process_reward_model), got "
            f"{type(prm).__name__}"
        )
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATIONS)}, got {aggregate!r}")
    if aggregate == "soft_min" and temperature is None:
        raise ValueError("aggregate soft_min needs a temperature > 0 (e.g. temperature=0.1)")
    if temperature is not None:
        if aggregate not in ("min", "soft_min"):
            raise ValueError(f"temperature applies to min and soft_min only, not {aggregate!r}")
        if isinstance(temperature, bool) or not float(temperature) > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        temperature = jnp.asarray(temperature, jnp.float32)
    if not isinstance(step_end, str) or not step_end:
        raise ValueError(f"step_end must be the task's step delimiter text, got {step_end!r}")
    if prm.tokenizer is None:
        raise ValueError("the PRM has no tokenizer: load it with its tokenizer files")
    if prm.separator_id is not None:
        ends = (int(prm.separator_id),)
    else:
        ends = lm_step_end_ids(prm.tokenizer, step_end)
        if not ends:
            raise ValueError(
                f"no token of the PRM's tokenizer contains the step delimiter {step_end!r}"
            )
    return StepReward(prm, aggregate, temperature, step_end, ends)


def separator_vocabulary(vocabulary: RMVocabulary, lm, reward: StepReward) -> RMVocabulary:
    """``vocabulary`` with the LM's step-delimiter tokens sent to the reward's separator (the
    vocabulary itself when the reward reads task step ends)."""
    if reward.separator_id is None:
        return vocabulary
    ends = np.asarray(lm_step_end_ids(lm.tokenizer, reward.step_end), np.int64)
    if not ends.size:
        raise ValueError(
            f"no token of the LM's tokenizer contains the step delimiter {reward.step_end!r}: "
            "the PRM's separator would never be read"
        )
    v = lm.config.vocab_size
    if vocabulary.vocab_map is None:
        table, matched = np.arange(v, dtype=np.int32), np.ones(v, bool)
        used = min(len(lm.tokenizer), v)
        coverage = VocabCoverage(v, len(lm.tokenizer), reward.config.vocab_size, 0, v - used, 0)
    else:
        base = vocabulary.vocab_map
        table, matched, coverage = base.table.copy(), base.matched.copy(), base.coverage
    table[ends] = int(reward.separator_id)
    matched[ends] = True
    return RMVocabulary(vocabulary.mode, VocabMap(table, matched, coverage))


def rm_frame(rm, prefix: list[int], suffix: list[int]) -> tuple[list[int], list[int]]:
    """The RM input's ``(prefix, suffix)`` around a response: the template's, or — for a
    :class:`StepReward` — the template prefix and the closing separator (or nothing)."""
    if isinstance(rm, StepReward):
        return prefix, rm.frame_suffix()
    return prefix, suffix


def response_reward(rm, hidden, ids, mask, start=0, *, for_gradient: bool = False):
    """The reward ``[B]`` float32 of RM inputs ``ids``/``mask [B, T]`` from the reward model's
    hidden states ``[B, T, H]``: a ``RewardModel``'s score at the last real token (the mean
    over labels when there are several), or a :class:`StepReward`'s aggregate of the step ends
    at or after slot ``start`` (scalar or ``[B]``, where the response begins)."""
    if isinstance(rm, StepReward):
        return rm.reward_of_hidden(hidden, rm.end_mask(ids, mask, start),
                                   for_gradient=for_gradient)  # fmt: skip
    score = rm.score_hidden(take_at(hidden, last_valid_index(mask)))
    return (score if score.ndim == 1 else jnp.mean(score, axis=-1)).astype(jnp.float32)
