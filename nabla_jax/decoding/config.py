"""``DecodeConfig``: the settings of the ∇-Reasoner loop, split into structure and numbers.

``DecodeConfig.program()`` is a :class:`DecodeProgram`: what shapes the compiled loop (sizes,
switches, which criteria exist), and no number; ``DecodeConfig.hyper()`` carries every number
(thresholds, sampling temperatures, top-k/top-p, DTO hyperparameters, the generation budget)
as run-time values.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import numpy as np

from nabla_jax.decoding.sampling import SamplingConfig, SamplingParams, SamplingProgram
from nabla_jax.functional.dto_config import DTOConfig, DTOHyper, DTOProgram

__all__ = ["DecodeConfig", "DecodeHyper", "DecodeProgram"]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Settings of the ∇-Reasoner loop, validated on construction.

    Defaults are the paper-faithful MATH-500 settings (``configs/qwen2.5-7b-math500.yaml``);
    docs/algorithm.md#where-nabla-jax-differs-and-why lists where they depart from the public
    script, and why.

    Attributes:
      max_length: most generated tokens per response.
      max_n_generations: most rollouts per prompt, the initial one included.
      rollout: sampling of rollouts (τ 0.6, top-p 0.95).
      resample: sampling of the refined position (τ 0.5, top-p 0.95).
      confidence_threshold: a position is uncertain when its top-1 probability is ≤ this
        (None = criterion off).
      entropy_threshold: ... and its entropy (nats) is ≥ this (None or 0 = off).
      grad_threshold: ... and ``‖∂loss/∂y_k‖₂`` from a probe is ≥ this (None = off; the probe
        costs 4 model calls).
      dto: the refinement's ``DTOConfig`` (defaults: the paper's 20 steps, lr 0.01,
        reward_coeff 1, gradient caching, only position 0 updated).
      dto_window: most ahead tokens in a DTO (and probe) window, from the selected position;
        None = the whole rest of the rollout. The RM always sees the whole response.
      rejection_sampling: accept a proposal only if the RM scores it above the current one.
      use_dto: False resamples from the unrefined rollout logits (an ablation).
      stop_strings: strings that end a response (the text is trimmed before them).
      eos_ids: ids that end a response; None = the LM config's EOS ids plus the tokenizer's.
      system: optional system message for the LM and RM chat templates.
      batch_size: rows decoded at once (the compiled loop's batch; a finished row takes the
        next waiting prompt).
      dto_rows: DTO runs on the rows that selected a position only, gathered into sub-batches of
        this many rows (one pass per sub-batch, the results scattered back; the same tokens
        and counters as one pass over the whole batch); None = the whole batch in one pass.
      dto_window_shapes: how many ``(window, rest)`` shapes the DTO step is compiled for
        (1–3). 1: one shape, the window plus the whole rest of the response, masked where a
        row's rest is shorter. 2 adds a window with no rest, 3 a half window: a row near its
        response's end then runs a smaller DTO, each shape one more copy of the DTO step in
        the compiled loop (on the bundled task 3 shapes compile in 25 s against 15 s and run
        3-10% faster warm; README "Compile time").

    Exploration options (off by default: the paper's loop):

      grad_quantile: the probe's threshold scaled to the model: a position qualifies when its
        gradient norm is at or above this quantile (in [0, 1)) of the norms of the probed
        window's candidate positions (None = off). Turns the probe on.
      grad_top_k: ... when its gradient norm is among the ``k`` largest of the probed window's
        candidates (None = off). Turns the probe on.
      dto_lr_gap: DTO steps sized to the logits they move: each row's learning rate is
        ``dto_lr_gap × (top-1 − top-2 logit gap at the selected position) / dto.num_steps``,
        replacing ``dto.learning_rate`` (None = off). Adam moves a logit by about the learning
        rate per step, so ``dto_lr_gap`` ≈ 1 lets the refinement close the gap.
      resample_excludes_current: resample the selected position without its current token, so
        every selected position proposes.
      positions_per_iteration: ``m``: an iteration resamples up to ``m`` candidate positions of
        the refined window (the first ``m`` qualifying ones), proposes them together (the
        ahead tokens between them kept, the rest regenerated) and commits through the last.
      accept_margin: accept a proposal only when its score beats the current one's by more
        than this (None = the paper's plain comparison); fewer false acceptances from a
        noisy reward model.
      refine_passes: passes over the response: when a row reaches its end (or has no
        candidate left) before its generation budget is spent, it starts again from its first
        token, up to this many passes (1 = the paper's single pass).

    Diagnostics (off by default):

      fidelity_top_k: at each refinement, rank the ``k`` most probable refined tokens by the
        reward gradient's linear estimate and by re-scoring, and record their Spearman
        correlation in the trace (:mod:`nabla_jax.decoding.fidelity`; ``k`` ≥ 2, the issue's
        16 a good choice; None = off). Costs one RM gradient and ``k`` RM scorings per
        refinement, not counted as model calls.
      oracle_proposals: the ceiling of any DTO: where the next-token oracle names a right
        token that differs from the current one, propose it instead of the resample's draw
        (what a perfect refinement of the resample distribution would propose; elsewhere the
        draw stands). Needs ``NablaDecoder(next_token_oracle=...)`` and one position per
        iteration. Measures how much a better gradient could add at the same selection,
        budget and acceptance test.
    """

    max_length: int = 1024
    max_n_generations: int = 8
    rollout: SamplingConfig = SamplingConfig(temperature=0.6, top_p=0.95)
    resample: SamplingConfig = SamplingConfig(temperature=0.5, top_p=0.95)
    confidence_threshold: float | None = 0.97
    entropy_threshold: float | None = None
    grad_threshold: float | None = 4.0
    dto: DTOConfig = DTOConfig()
    dto_window: int | None = 32
    rejection_sampling: bool = True
    use_dto: bool = True
    stop_strings: tuple[str, ...] = ()
    eos_ids: tuple[int, ...] | None = None
    system: str | None = None
    batch_size: int = 8
    grad_quantile: float | None = None
    grad_top_k: int | None = None
    dto_lr_gap: float | None = None
    resample_excludes_current: bool = False
    positions_per_iteration: int = 1
    refine_passes: int = 1
    accept_margin: float | None = None
    fidelity_top_k: int | None = None
    dto_rows: int | None = None
    dto_window_shapes: int = 1
    oracle_proposals: bool = False

    def __post_init__(self):
        def bad(name, want):
            raise ValueError(f"DecodeConfig.{name}={getattr(self, name)!r}: must be {want}")

        for name in (
            "max_length", "max_n_generations", "batch_size", "positions_per_iteration",
            "refine_passes",
        ):  # fmt: skip
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "an int ≥ 1")
        for name in ("rollout", "resample"):
            if not isinstance(getattr(self, name), SamplingConfig):
                bad(name, "a SamplingConfig")
        c = self.confidence_threshold
        if c is not None and not (_is_real(c) and 0 <= c <= 1):
            bad("confidence_threshold", "None or a number in [0, 1]")
        for name in ("entropy_threshold", "grad_threshold"):
            v = getattr(self, name)
            if v is not None and not (_is_real(v) and v >= 0):
                bad(name, "None or a finite number ≥ 0")
        q = self.grad_quantile
        if q is not None and not (_is_real(q) and 0 <= q < 1):
            bad("grad_quantile", "None or a number in [0, 1)")
        if self.grad_top_k is not None and (not _is_int(self.grad_top_k) or self.grad_top_k < 1):
            bad("grad_top_k", "None or an int ≥ 1")
        if q is not None and self.grad_top_k is not None:
            bad("grad_top_k", "None when grad_quantile is set (choose one rank rule)")
        f = self.fidelity_top_k
        if f is not None and (not _is_int(f) or f < 2):
            bad("fidelity_top_k", "None or an int ≥ 2")
        g = self.dto_lr_gap
        if g is not None and not (_is_real(g) and g > 0):
            bad("dto_lr_gap", "None or a finite number > 0")
        a = self.accept_margin
        if a is not None and not (_is_real(a) and a >= 0):
            bad("accept_margin", "None or a finite number ≥ 0")
        if not isinstance(self.dto, DTOConfig):
            bad("dto", "a DTOConfig")
        if self.dto_window is not None and (not _is_int(self.dto_window) or self.dto_window < 1):
            bad("dto_window", "None or an int ≥ 1")
        r = self.dto_rows
        if r is not None and (not _is_int(r) or not 1 <= r <= self.batch_size):
            bad("dto_rows", f"None or an int in [1, batch_size={self.batch_size}]")
        n = self.dto_window_shapes
        if not _is_int(n) or not 1 <= n <= 3:
            bad("dto_window_shapes", "an int in [1, 3]")
        for name in ("rejection_sampling", "use_dto", "resample_excludes_current",
                     "oracle_proposals"):  # fmt: skip
            if not isinstance(getattr(self, name), bool):
                bad(name, "a bool")
        if self.oracle_proposals and self.positions_per_iteration != 1:
            bad(
                "oracle_proposals",
                "False with positions_per_iteration > 1 (one position "
                "per iteration: the oracle names one right token)",
            )
        stops = self.stop_strings
        if isinstance(stops, str):
            bad("stop_strings", "a tuple of strings (not one string)")
        stops = tuple(stops)
        if any(not isinstance(s, str) or not s for s in stops):
            bad("stop_strings", "a tuple of non-empty strings")
        object.__setattr__(self, "stop_strings", stops)
        if self.eos_ids is not None:
            eos = tuple(self.eos_ids)
            if not eos or any(not _is_int(e) or e < 0 for e in eos):
                bad("eos_ids", "None or a non-empty tuple of token ids ≥ 0")
            object.__setattr__(self, "eos_ids", tuple(int(e) for e in eos))
        if self.system is not None and not isinstance(self.system, str):
            bad("system", "None or a string")

    @property
    def uses_probe(self) -> bool:
        return self.grad_rank is not None or self.grad_threshold is not None

    @property
    def grad_rank(self) -> str | None:
        """The probe's rank rule: "quantile", "top_k" or None."""
        if self.grad_quantile is not None:
            return "quantile"
        return "top_k" if self.grad_top_k is not None else None

    @property
    def window(self) -> int:
        """``K``: slots of a DTO / probe window (``dto_window`` capped at ``max_length``)."""
        return self.max_length if self.dto_window is None else min(self.dto_window, self.max_length)

    def hyper(self) -> DecodeHyper:
        """The numbers of this config as run-time values of the compiled loop."""
        f = np.float32
        return DecodeHyper(
            max_n_generations=np.int32(self.max_n_generations),
            confidence_threshold=f(self.confidence_threshold or 0.0),
            entropy_threshold=f(self.entropy_threshold or 0.0),
            grad_threshold=f(self.grad_threshold or 0.0),
            grad_quantile=f(self.grad_quantile or 0.0),
            grad_top_k=np.int32(self.grad_top_k or 1),
            dto_lr_gap=f(self.dto_lr_gap or 0.0),
            accept_margin=f(self.accept_margin or 0.0),
            rollout=SamplingParams.of(self.rollout),
            resample=SamplingParams.of(self.resample),
            dto=self.dto.hyper(),
        )

    def program(self) -> DecodeProgram:
        """The structure of this config — the compiled loop's key, with no number in it: sizes
        (``max_length``, ``dto_window``, ``batch_size``), which selection criteria are on,
        greedy versus filtered sampling, the DTO structure, the ablation switches and the
        exploration structure. Thresholds, temperatures, the budget and the DTO numbers are
        in :meth:`hyper`; two configs that differ only there share one program."""
        return DecodeProgram(
            max_length=self.max_length,
            batch_size=self.batch_size,
            window=self.window,
            rollout=SamplingProgram.of(self.rollout),
            resample=SamplingProgram.of(self.resample),
            confidence=self.confidence_threshold is not None,
            entropy=bool(self.entropy_threshold),
            uses_probe=self.uses_probe,
            grad_rank=self.grad_rank,
            dto=self.dto.program(),
            dto_lr_gap=self.dto_lr_gap is not None,
            accept_margin=self.accept_margin is not None,
            rejection_sampling=self.rejection_sampling,
            use_dto=self.use_dto,
            resample_excludes_current=self.resample_excludes_current,
            positions_per_iteration=self.positions_per_iteration,
            refine_passes=self.refine_passes,
            fidelity_top_k=self.fidelity_top_k,
            dto_rows=None if self.dto_rows in (None, self.batch_size) else self.dto_rows,
            dto_window_shapes=self.dto_window_shapes,
            oracle_proposals=self.oracle_proposals,
        )


@dataclasses.dataclass(frozen=True)
class DecodeProgram:
    """The static structure of a :class:`DecodeConfig` (``cfg.program()``): what the compiled
    loop's shapes and branches depend on, and nothing else — a threshold, temperature or budget
    cannot be read from it by mistake (those are :class:`DecodeHyper` values).

    Attributes:
      max_length, batch_size: ``L`` and ``B``.
      window: ``K``, slots of a DTO / probe window.
      rollout, resample: greedy or filtered sampling, and which filters exist.
      confidence, entropy: whether each selection criterion is on.
      uses_probe: whether the gradient-norm probe runs; grad_rank: its rank rule or None.
      dto: the DTO program (``DTOConfig.program()``).
      dto_lr_gap: per-row learning rates sized to the logit gap.
      accept_margin: acceptance needs a margin over the current score.
      rejection_sampling, use_dto, resample_excludes_current, positions_per_iteration,
      refine_passes, fidelity_top_k, oracle_proposals: as in :class:`DecodeConfig`.
      dto_rows: rows per DTO pass, or None (the whole batch in one pass).
      dto_window_shapes: the DTO step's compiled window shapes, the largest kept.
    """

    max_length: int
    batch_size: int
    window: int
    rollout: SamplingProgram
    resample: SamplingProgram
    confidence: bool
    entropy: bool
    uses_probe: bool
    grad_rank: str | None
    dto: DTOProgram
    dto_lr_gap: bool
    accept_margin: bool
    rejection_sampling: bool
    use_dto: bool
    resample_excludes_current: bool
    positions_per_iteration: int
    refine_passes: int
    fidelity_top_k: int | None = None
    dto_rows: int | None = None
    dto_window_shapes: int = 1
    oracle_proposals: bool = False


class DecodeHyper(NamedTuple):
    """Run-time numbers of the ∇-Reasoner loop (a sweep over them reuses one program)."""

    max_n_generations: Any
    confidence_threshold: Any
    entropy_threshold: Any
    grad_threshold: Any
    grad_quantile: Any
    grad_top_k: Any
    dto_lr_gap: Any
    accept_margin: Any
    rollout: SamplingParams
    resample: SamplingParams
    dto: DTOHyper
