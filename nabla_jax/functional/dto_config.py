"""``DTOConfig``: every knob of differentiable textual optimization, validated on construction.

Defaults are the paper's public MATH-500 settings (docs/algorithm.md): 20 steps, lr 0.01, Adam with
L2 weight decay 0, cosine schedule with floor 0.1 and no warmup, reward_coeff 1, nll_coeff 1e-3,
hard straight-through softmax at tau 1 without Gumbel noise, only ahead position 0 updated,
gradient caching on. ``objective="article"`` switches to the article's sketch (reward + λ·KL).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

__all__ = [
    "DTOProgram",
    "schedule_multiplier",
    "KL_DIRECTIONS",
    "MODES",
    "OBJECTIVES",
    "ON_NONFINITE",
    "OPTIMIZERS",
    "REWARD_FORMS",
    "SCHEDULES",
    "WINDOW_DTYPES",
    "DTOConfig",
    "DTOHyper",
]

OBJECTIVES = ("paper", "article")
MODES = ("logits", "latents")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "linear", "constant")
KL_DIRECTIONS = ("ref_theta", "theta_ref")
ON_NONFINITE = ("raise", "flag")
WINDOW_DTYPES = ("float32", "bfloat16")
REWARD_FORMS = ("score", "mean_last_logits")


class DTOHyper(NamedTuple):
    """The scalar hyperparameters of a refinement, passed to the compiled program as run-time
    values (float32 scalars, or arrays with a leading axis under ``vmap``): a sweep over them
    reuses one program. ``warmup`` is the number of warmup steps."""

    learning_rate: Any
    weight_decay: Any
    b1: Any
    b2: Any
    eps: Any
    warmup: Any
    min_lr_ratio: Any
    reward_coeff: Any
    nll_coeff: Any
    lambda_kl: Any
    tau: Any
    gumbel_scale: Any
    kl_warn_threshold: Any


@dataclasses.dataclass(frozen=True)
class DTOConfig:
    """Settings of one refinement.

    Attributes:
      objective: "paper" — loss = -(loglik + reward_coeff·reward), the LM log-likelihood of the
        window under the committed prefix plus the RM score; "article" — loss =
        -reward + lambda_kl·KL, the sketch's form (no LM term).
      mode: "logits" (optimize window logits Z [K, V]) or "latents" (last hidden states
        H [K, D], Z = lm_head(H)).
      num_steps: optimizer steps (all run inside one ``lax.scan``).
      learning_rate: peak learning rate.
      optimizer: "adam" — torch ``Adam``: weight decay is L2 added to the gradient (the paper);
        "adamw" — decoupled weight decay.
      weight_decay: L2 / decoupled decay coefficient.
      b1, b2, eps: Adam moments and epsilon (torch defaults).
      schedule: "cosine" | "linear" | "constant" multiplier after warmup, floored at min_lr_ratio
        (cosine and linear).
      warmup_ratio: warmup steps = floor(num_steps·warmup_ratio) unless ``warmup_steps`` is set.
      min_lr_ratio: floor of the schedule multiplier.
      reward_coeff, nll_coeff: weights of the paper's reward and log-likelihood terms.
      lambda_kl: weight of the KL term (article objective).
      kl_direction: "ref_theta" = KL(p_ref ‖ p_θ), what the article's code computes
        (``F.kl_div(log p_θ, p_ref)``); "theta_ref" = KL(p_θ ‖ p_ref), what its prose says.
      reward_form: "score" (sequence-classification score at the last token) or
        "mean_last_logits" (the sketch's ``logits[:, -1, :].mean()`` of a causal-LM reward net).
      tau: straight-through softmax temperature. hard: one-hot forward (False: soft y).
      gumbel_scale: Gumbel noise scale on the logits (0 = off, the default).
      update_postfix: False — only ahead position 0 receives gradient (the paper's default).
      grad_caching: reuse ∂loss/∂y while no argmax in the window changes (no model calls).
      kl_warn_threshold: KL (nats) above which a step is flagged as collapse (article: 2).
      ste_warn_steps: the article's bound on straight-through steps; more steps with the
        article objective triggers a warning.
      on_nonfinite: "raise" — a non-finite loss raises ``FloatingPointError`` naming the step;
        "flag" — the row stops updating and ``trace.nonfinite`` marks it.
      window_dtype: dtype of the optimized window (and the optimizer's state): "float32"
        (default) or "bfloat16" — what the public code does when the model runs in bfloat16
        (there, Adam steps ≤ lr cannot move a logit whose bfloat16 spacing is larger).
    """

    objective: str = "paper"
    mode: str = "logits"
    num_steps: int = 20
    learning_rate: float = 0.01
    optimizer: str = "adam"
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1
    reward_coeff: float = 1.0
    nll_coeff: float = 1e-3
    lambda_kl: float = 0.1
    kl_direction: str = "ref_theta"
    reward_form: str = "score"
    tau: float = 1.0
    hard: bool = True
    gumbel_scale: float = 0.0
    update_postfix: bool = False
    grad_caching: bool = True
    kl_warn_threshold: float = 2.0
    ste_warn_steps: int = 8
    on_nonfinite: str = "raise"
    window_dtype: str = "float32"

    def __post_init__(self):
        def choice(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ValueError(
                    f"DTOConfig.{name}={value!r} is not one of {', '.join(map(repr, options))}"
                )

        def check(name, ok, want):
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"DTOConfig.{name}={value!r}: must be {want}")

        choice("objective", OBJECTIVES)
        choice("mode", MODES)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("kl_direction", KL_DIRECTIONS)
        choice("reward_form", REWARD_FORMS)
        choice("on_nonfinite", ON_NONFINITE)
        choice("window_dtype", WINDOW_DTYPES)
        import numbers

        # bool is an int in Python: num_steps=True or b1=False are typos, not numbers.
        is_int = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
        is_num = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
        check("num_steps", lambda v: is_int(v) and v >= 1, "an int ≥ 1")
        finite_pos = lambda v: is_num(v) and math.isfinite(v) and v > 0
        finite_nonneg = lambda v: is_num(v) and math.isfinite(v) and v >= 0
        check("learning_rate", finite_pos, "a finite number > 0")
        check("tau", finite_pos, "a finite number > 0")
        check("eps", finite_pos, "a finite number > 0")
        for name in ("weight_decay", "reward_coeff", "nll_coeff", "lambda_kl", "gumbel_scale"):
            check(name, finite_nonneg, "a finite number ≥ 0")
        check("b1", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
        check("b2", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
        check("min_lr_ratio", lambda v: is_num(v) and 0 <= v <= 1, "a number in [0, 1]")
        check("warmup_ratio", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
        if self.warmup_steps is not None:
            check(
                "warmup_steps",
                lambda v: is_int(v) and 0 <= v < self.num_steps,
                f"an int in [0, num_steps={self.num_steps})",
            )
        for name in ("hard", "update_postfix", "grad_caching"):
            check(name, lambda v: isinstance(v, bool), "True or False")
        check("ste_warn_steps", lambda v: is_int(v) and v >= 0, "an int ≥ 0")
        check("kl_warn_threshold", finite_pos, "a finite number > 0")

    @property
    def num_warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return math.floor(self.num_steps * self.warmup_ratio)

    @property
    def calls_per_full_step(self) -> int:
        """Model calls a full step costs: LM fwd+bwd (paper objective) and RM fwd+bwd."""
        lm = 2 if self.objective == "paper" else 0
        return lm + 2

    def hyper(self) -> DTOHyper:
        """The scalar hyperparameters as float32 values: the run-time inputs of the program."""
        import numpy as np

        f = np.float32
        return DTOHyper(
            learning_rate=f(self.learning_rate),
            weight_decay=f(self.weight_decay),
            b1=f(self.b1),
            b2=f(self.b2),
            eps=f(self.eps),
            warmup=f(self.num_warmup),
            min_lr_ratio=f(self.min_lr_ratio),
            reward_coeff=f(self.reward_coeff),
            nll_coeff=f(self.nll_coeff),
            lambda_kl=f(self.lambda_kl),
            tau=f(self.tau),
            gumbel_scale=f(self.gumbel_scale),
            kl_warn_threshold=f(self.kl_warn_threshold),
        )

    @property
    def has_reward(self) -> bool:
        """The reward term exists (a non-zero ``reward_coeff``)."""
        return self.reward_coeff != 0

    @property
    def has_kl(self) -> bool:
        """The KL term exists (a non-zero ``lambda_kl``)."""
        return self.lambda_kl != 0

    @property
    def has_gumbel(self) -> bool:
        """Gumbel noise is drawn (``gumbel_scale > 0``)."""
        return self.gumbel_scale > 0

    def program(self) -> DTOProgram:
        """The structure of this config — the compiled program's key, with no number in it.

        Two configs that differ only in :class:`DTOHyper` values (or host-only settings) share
        one compiled program. What stays is structure: objective, mode, steps, optimizer and
        schedule kinds, the relaxation's hardness, and whether the reward, the KL term and the
        Gumbel noise are present at all (zero versus non-zero coefficients).
        """
        return DTOProgram(
            objective=self.objective,
            mode=self.mode,
            num_steps=self.num_steps,
            optimizer=self.optimizer,
            schedule=self.schedule,
            kl_direction=self.kl_direction,
            reward_form=self.reward_form,
            hard=self.hard,
            update_postfix=self.update_postfix,
            grad_caching=self.grad_caching,
            window_dtype=self.window_dtype,
            has_reward=self.has_reward,
            has_kl=self.has_kl,
            has_gumbel=self.has_gumbel,
        )

    def schedule_multiplier(self, step, warmup, min_lr_ratio):
        """Schedule multiplier at optimizer step ``step`` (0-based), as torch ``LambdaLR``
        (:func:`schedule_multiplier`)."""
        return schedule_multiplier(self.schedule, self.num_steps, step, warmup, min_lr_ratio)

    def lr_multiplier(self, step, hyper: DTOHyper | None = None):
        """:meth:`schedule_multiplier` with the warmup and floor of ``hyper`` (default: this
        config's)."""
        h = self.hyper() if hyper is None else hyper
        return self.schedule_multiplier(step, h.warmup, h.min_lr_ratio)

    def learning_rate_at(self, step, hyper: DTOHyper | None = None):
        """The scheduled learning rate at optimizer step ``step``."""
        h = self.hyper() if hyper is None else hyper
        return h.learning_rate * self.lr_multiplier(step, h)


def schedule_multiplier(schedule: str, num_steps: int, step, warmup, min_lr_ratio):
    """The learning-rate multiplier at optimizer step ``step`` (0-based), as torch ``LambdaLR``.

    Args:
      schedule: "cosine" | "linear" | "constant" after warmup.
      num_steps: steps of the refinement.
      step: the step (int or traced).
      warmup: warmup steps (float32, possibly traced).
      min_lr_ratio: floor of the multiplier after warmup (cosine and linear).
    """
    import jax.numpy as jnp

    step = jnp.asarray(step, jnp.float32)
    warm = jnp.asarray(warmup, jnp.float32)
    total = float(num_steps)
    warm_mult = step / jnp.maximum(1.0, warm)
    if schedule == "constant":
        after = jnp.ones_like(step)
    else:
        if schedule == "cosine":
            progress = (step - warm) / jnp.maximum(1.0, total - warm)
            after = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        else:
            after = (total - step) / jnp.maximum(1.0, total - warm)
        after = jnp.maximum(min_lr_ratio, after)
    return jnp.where(step < warm, warm_mult, after)


@dataclasses.dataclass(frozen=True)
class DTOProgram:
    """The static structure of a :class:`DTOConfig` (``cfg.program()``): what a compiled
    refinement's shapes and branches depend on, and nothing else — a learning rate or
    coefficient cannot be read from it by mistake (those are :class:`DTOHyper` values).

    Attributes:
      objective, mode, num_steps, optimizer, schedule: as in :class:`DTOConfig`.
      kl_direction, reward_form, hard, update_postfix, grad_caching, window_dtype: likewise.
      has_reward, has_kl, has_gumbel: whether the reward term, the KL term and the Gumbel
        noise exist (non-zero ``reward_coeff``, ``lambda_kl``, ``gumbel_scale``).
    """

    objective: str
    mode: str
    num_steps: int
    optimizer: str
    schedule: str
    kl_direction: str
    reward_form: str
    hard: bool
    update_postfix: bool
    grad_caching: bool
    window_dtype: str
    has_reward: bool
    has_kl: bool
    has_gumbel: bool

    @property
    def calls_per_full_step(self) -> int:
        """Model calls a full step costs: LM fwd+bwd (paper objective) and RM fwd+bwd."""
        return (2 if self.objective == "paper" else 0) + 2

    def schedule_multiplier(self, step, warmup, min_lr_ratio):
        """The learning-rate multiplier at ``step`` (:func:`schedule_multiplier`)."""
        return schedule_multiplier(self.schedule, self.num_steps, step, warmup, min_lr_ratio)

    def learning_rate_at(self, step, hyper: DTOHyper):
        """The scheduled learning rate at optimizer step ``step`` with ``hyper``'s numbers."""
        h = hyper
        return h.learning_rate * self.schedule_multiplier(step, h.warmup, h.min_lr_ratio)
