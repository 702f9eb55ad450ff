"""The ∇-Reasoner decoding loop (ALGORITHM.md §3), for a batch of prompts in lockstep.

Each prompt carries its own state: the committed response tokens, the *ahead* tokens (the
rest of its latest rollout, with the logits — or last hidden states in latents mode — they
were sampled from), counters and a done flag. Python drives the iterations; every stage runs
batched over the prompts that need it, as compiled programs with bucketed shapes:

1. initial rollout of every prompt (``rollout``);
2. per iteration, for every active prompt:

   a. **select** the first ahead position that is uncertain by every configured criterion
      (top-1 probability ≤ ``confidence_threshold``, entropy ≥ ``entropy_threshold``, and
      ``‖∂loss/∂y_k‖₂ ≥ grad_threshold`` from a probe forward/backward of the DTO loss); commit
      the tokens before it; none → commit everything and finish;
   b. **refine** (DTO, ``refine_batch``) the window starting at the selected position;
   c. **resample** position 0 from the optimized logits;
   d. if the token changed, **propose**: roll out again from ``committed ++ [new token]``
      (one more generation) and, with rejection sampling, accept iff the reward model scores
      the proposed full response above the current one. Accepted: the new token is committed
      and the proposal's continuation becomes the ahead window. Rejected or unchanged: the
      current token 0 is committed;
   e. stop on EOS / a stop string in the committed text, at ``max_length``, or when
      ``max_n_generations`` rollouts have been made (then the rest is committed).

Differences from the public code, on purpose:

* the acceptance test renders the current and the proposed response *identically* (RM chat
  template prefix ++ response ++ suffix, the prompt once, a trailing EOS dropped from both);
* the gradient probe is counted: 4 model calls (LM and RM, forward and backward) per probe;
* the DTO window is the rest of the rollout capped at ``dto_window`` tokens (default 32). The
  reward model still sees the whole response: the ahead tokens past the window are appended
  (as the argmax of their logits, like the window itself) to the RM suffix; only the LM
  log-likelihood term stops at the window's end. ``dto_window=None`` optimizes the whole rest.
  The probe uses the same windows; when no position of a probed window qualifies, the next
  window is probed (each probe counted).
* ``max_n_generations`` is never exceeded: the loop stops before an iteration once that many
  rollouts (the initial one included) have been made.

Randomness: a prompt's keys derive from ``key`` folded with ``crc32`` of its content (its chat
messages), then with a stream id (rollout, resample, DTO, probe) and the prompt's own counter
(generation number, iteration number, refinement number, probe number) — never its position
in the batch — so a prompt decodes to the same response alone or in company. Two identical
prompts in one call therefore decode identically; fold a sample index into ``key`` (one call
per sample) for distinct samples.

Model calls (per prompt, ALGORITHM.md §3): one per generated token of every rollout, 4 per full
DTO step (``refine``'s count), 4 per probe, one per RM scoring (2 per acceptance test).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.buckets import bucket_length
from nabla_jax.decoding.generate import pad_prompts, rollout
from nabla_jax.decoding.stopping import default_eos_ids as _default_eos
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.dto_config import DTOConfig
from nabla_jax.models.model import CausalLM, RewardModel
from nabla_jax.refine import RefineProblem, refine_batch, window_grad_norms
from nabla_jax.templates import (
    _require_chat_template,
    build_messages,
    lm_prompt_ids,
    rm_prefix_suffix_ids,
)
from nabla_jax.vocab import shared_rm_tokenizer

__all__ = ["DecodeConfig", "DecodeResult", "NablaDecoder"]

# Key streams (folded into a prompt's base key before its own counter).
_ROLLOUT, _RESAMPLE, _DTO, _PROBE = 0, 1, 2, 3

STOP_REASONS = ("eos", "stop_string", "length")
REFINEMENT_ENDS = ("converged", "max_generations", "stopped")


# --------------------------------------------------------------------------------------------
# Config and result
# --------------------------------------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Settings of the ∇-Reasoner loop, validated on construction.

    Defaults follow the public MATH-500 script (ALGORITHM.md §3, "Reference settings").

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
      batch_size: rows per compiled call (rollouts, DTO, probes).
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

    def __post_init__(self):
        def bad(name, want):
            raise ValueError(f"DecodeConfig.{name}={getattr(self, name)!r}: must be {want}")

        for name in ("max_length", "max_n_generations", "batch_size"):
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
        if not isinstance(self.dto, DTOConfig):
            bad("dto", "a DTOConfig")
        if self.dto_window is not None and (not _is_int(self.dto_window) or self.dto_window < 1):
            bad("dto_window", "None or an int ≥ 1")
        for name in ("rejection_sampling", "use_dto"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "a bool")
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
        return self.grad_threshold is not None


@dataclasses.dataclass
class DecodeResult:
    """One decoded response.

    Attributes:
      prompt: the prompt as given.
      text: the response, trimmed before the first stop string / EOS.
      token_ids: the committed response ids (untrimmed: a final EOS or stop string included).
      stats: counters — generations (rollouts, the initial one included), rejections,
        model_calls (= rollout_calls + dto_calls + probe_calls + score_calls), generated_tokens,
        optimized_tokens (window length × DTO steps, summed), rewarded_tokens (RM input tokens
        of acceptance tests), iterations, refinements, probes, stop_reason ("eos" |
        "stop_string" | "length"), refinement_end ("converged": no uncertain position left;
        "max_generations"; "stopped": EOS / stop string / max_length reached first).
      trace: one dict per refinement: position (index in the response), old_token, new_token,
        proposed, accepted (None without a proposal), score_current, score_proposed.
    """

    prompt: Any
    text: str
    token_ids: list[int]
    stats: dict
    trace: list


# --------------------------------------------------------------------------------------------
# Compiled helpers
# --------------------------------------------------------------------------------------------


@jax.jit
def _position_stats(logits):
    """Per position of ``[B, N, V]``: top-1 probability, entropy (nats), argmax id."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
    return jnp.max(p, axis=-1), entropy, jnp.argmax(logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("sampling",))
def _sample_rows(keys, logits, sampling: SamplingConfig):
    """One token per row of ``logits [B, V]``, row ``b`` drawn with ``keys[b]``."""
    return jax.vmap(sampling.sample)(keys, logits)


@jax.jit
def _score_padded(rm, ids, mask):
    score = rm.score(ids, mask)
    return score if score.ndim == 1 else jnp.mean(score, axis=-1)


@jax.jit
def _head_logits(lm, hidden):
    return lm.head_logits(hidden)


def _pow2(n: int) -> int:
    """The next power of two ≥ n (row-count bucket; used by the baselines)."""
    return 1 << max(0, n - 1).bit_length()


# --------------------------------------------------------------------------------------------
# Per-prompt state
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Ahead:
    """A rollout's tokens and per-position data; ``offset`` of them are already consumed."""

    tokens: np.ndarray  # [n] sampled ids
    argmax: np.ndarray  # [n] argmax of the logits each was sampled from
    top1: np.ndarray  # [n]
    entropy: np.ndarray  # [n]
    store: Any  # [n, V] logits or [n, D] hidden states (device)
    calls: int = 0
    offset: int = 0

    def __len__(self) -> int:
        return len(self.tokens) - self.offset

    def rest(self, name: str):
        return getattr(self, name)[self.offset :]


_COUNTERS = (
    "generations",
    "rejections",
    "model_calls",
    "rollout_calls",
    "dto_calls",
    "probe_calls",
    "score_calls",
    "generated_tokens",
    "optimized_tokens",
    "rewarded_tokens",
    "iterations",
    "refinements",
    "probes",
)


@dataclasses.dataclass
class _State:
    prompt: Any
    base_key: Any
    lm_prompt: list[int]
    rm_prefix: list[int]
    rm_suffix: list[int]
    committed: list[int] = dataclasses.field(default_factory=list)
    ahead: _Ahead | None = None
    stats: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    trace: list = dataclasses.field(default_factory=list)
    done: bool = False
    stop_reason: str = "length"
    refinement_end: str = "stopped"
    text: str = ""

    def key(self, stream: int, counter: int):
        return jax.random.fold_in(jax.random.fold_in(self.base_key, stream), counter)

    def count_calls(self, part: str, n: int) -> None:
        self.stats[part] += int(n)
        self.stats["model_calls"] += int(n)


def _prompt_id(messages) -> int:
    """A stable 31-bit id of a prompt's content (crc32 of its messages as JSON)."""
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return zlib.crc32(blob) & 0x7FFFFFFF


# --------------------------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------------------------


class NablaDecoder:
    """∇-Reasoner decoding: ``NablaDecoder(lm, rm, cfg).generate(prompts, key)``.

    Args:
      lm: the policy (``CausalLM``) with a tokenizer that has a chat template.
      rm: the reward model (``RewardModel``); its tokenizer's chat template (or the LM's, when
        the RM has no tokenizer) frames the response for the reward terms.
      cfg: a ``DecodeConfig``.
      mesh: optional ``jax.sharding.Mesh`` ("data", "model"): the models' weights are split
        over "model" and each DTO batch over "data" (``cfg.batch_size`` must divide by it).
      scorer: optional acceptance-test scorer: called with a list of full RM input id lists
        (RM prefix ++ response ++ RM suffix), returns one float per list. Default: the reward
        model's score. DTO always uses the reward model; this hook only replaces the test.
    """

    def __init__(
        self,
        lm: CausalLM,
        rm: RewardModel,
        cfg: DecodeConfig | None = None,
        *,
        scorer: Callable[[list[list[int]]], Sequence[float]] | None = None,
        mesh=None,
    ):
        cfg = DecodeConfig() if cfg is None else cfg
        if not isinstance(cfg, DecodeConfig):
            raise TypeError(f"cfg must be a DecodeConfig, got {type(cfg).__name__}")
        if not isinstance(lm, CausalLM):
            raise TypeError(f"lm must be a nabla_jax CausalLM, got {type(lm).__name__}")
        if not isinstance(rm, RewardModel):
            raise TypeError(
                f"rm must be a nabla_jax RewardModel (load it with nj.load_reward_model), got "
                f"{type(rm).__name__}"
            )
        if scorer is not None and not callable(scorer):
            raise TypeError("scorer must be callable: list of RM input id lists -> scores")
        if lm.tokenizer is None:
            raise ValueError(
                "the LM has no tokenizer: load it with its tokenizer (nj.load_causal_lm(path)) "
                "— decoding renders chat prompts and decodes responses"
            )
        _require_chat_template(lm.tokenizer, "LM")
        self.rm_tokenizer = shared_rm_tokenizer(lm, rm, "the decoder")
        if mesh is not None:
            from nabla_jax import sharding

            sharding.check_batch_divisible(cfg.batch_size, mesh, "DecodeConfig.batch_size")
            lm, rm = sharding.shard_model(lm, mesh), sharding.shard_model(rm, mesh)
        self.mesh = mesh
        self.lm, self.rm, self.cfg, self.scorer = lm, rm, cfg, scorer
        self.tokenizer = lm.tokenizer
        self.eos_ids = cfg.eos_ids if cfg.eos_ids is not None else _default_eos(lm, lm.tokenizer)
        self._eos = set(self.eos_ids)
        self._latents = cfg.dto.mode == "latents"

    # ---------------------------------------------------------------- public API

    def generate(
        self, prompts: Sequence[Any], key, *, progress: bool = False
    ) -> list[DecodeResult]:
        """Decode every prompt (a user message string or a list of chat messages).

        Args:
          prompts: the prompts; decoded together, in lockstep.
          key: a ``jax.random`` key. Each prompt's randomness derives from it and the prompt's
            content only, so the result for a prompt does not depend on its company.
          progress: show a progress bar of finished prompts and generations.
        Returns:
          one :class:`DecodeResult` per prompt, in input order.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError("prompts must be a list of prompts (wrap one prompt in a list)")
        if not prompts:
            return []
        states = [self._new_state(p, key) for p in prompts]
        cfg = self.cfg
        rows = [(s.lm_prompt, cfg.max_length, s.key(_ROLLOUT, 0)) for s in states]
        for s, ahead in zip(states, self._rollouts(rows), strict=True):
            self._take_rollout(s, ahead)
            s.ahead = ahead
            self._check_stop(s)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(states), desc="∇-Reasoner", unit="prompt", disable=not progress)
        while True:
            active = [s for s in states if not s.done]
            bar.n = len(states) - len(active)
            bar.set_postfix(generations=sum(s.stats["generations"] for s in states))
            bar.refresh()
            for s in active:
                if s.stats["generations"] >= cfg.max_n_generations:
                    s.refinement_end = "max_generations"
                    self._commit(s, len(s.ahead))
                    self._check_stop(s, final=True)
            active = [s for s in active if not s.done]
            if not active:
                bar.n = len(states)
                bar.close()
                break
            for s in active:
                s.stats["iterations"] += 1
            chosen = self._select(active)
            if not chosen:
                continue
            logits0 = self._refine(chosen)
            new_tokens = self._resample(chosen, logits0)
            old_tokens = [int(s.ahead.tokens[s.ahead.offset]) for s in chosen]
            proposing = [
                (s, t) for s, t, o in zip(chosen, new_tokens, old_tokens, strict=True) if t != o
            ]
            conts = self._propose(proposing)
            verdicts = self._accept(proposing, conts)
            outcome = {id(s): (t, c, v) for (s, t), c, v in zip(proposing, conts, verdicts)}
            for s, old in zip(chosen, old_tokens, strict=True):
                event = {
                    "position": len(s.committed),
                    "old_token": old,
                    "new_token": old,
                    "proposed": False,
                    "accepted": None,
                    "score_current": None,
                    "score_proposed": None,
                }
                if id(s) in outcome:
                    tok, cont, (accepted, cur, prop) = outcome[id(s)]
                    event.update(
                        new_token=tok,
                        proposed=True,
                        accepted=accepted,
                        score_current=cur,
                        score_proposed=prop,
                    )
                    if accepted:
                        s.committed.append(tok)
                        s.ahead = cont
                    else:
                        s.stats["rejections"] += 1
                        self._commit(s, 1)
                else:
                    self._commit(s, 1)
                s.trace.append(event)
                self._check_stop(s)
        return [self._result(s) for s in states]

    def generate_one(self, prompt: Any, key) -> DecodeResult:
        """``generate([prompt], key)[0]`` (the same result the prompt gets in any batch)."""
        return self.generate([prompt], key)[0]

    # ---------------------------------------------------------------- state

    def _new_state(self, prompt, key) -> _State:
        messages = build_messages(prompt, system=self.cfg.system)
        lm_prompt = lm_prompt_ids(self.tokenizer, prompt, system=self.cfg.system)
        rm_prefix, rm_suffix = rm_prefix_suffix_ids(
            self.rm_tokenizer, prompt, system=self.cfg.system
        )
        base = jax.random.fold_in(key, _prompt_id(messages))
        return _State(prompt, base, lm_prompt, rm_prefix, rm_suffix)

    def _take_rollout(self, s: _State, ahead: _Ahead) -> None:
        s.stats["generations"] += 1
        s.stats["generated_tokens"] += len(ahead.tokens)
        s.count_calls("rollout_calls", ahead.calls)

    def _commit(self, s: _State, n: int) -> None:
        ah = s.ahead
        s.committed += ah.tokens[ah.offset : ah.offset + n].tolist()
        ah.offset += n

    def _response_end(self, ids: list[int]) -> tuple[list[int], str | None]:
        """(ids before the first EOS, "eos" or None)."""
        for i, t in enumerate(ids):
            if t in self._eos:
                return ids[:i], "eos"
        return ids, None

    def _check_stop(self, s: _State, final: bool = False) -> None:
        body, reason = self._response_end(s.committed)
        text = self.tokenizer.decode(body)
        cut = min((i for i in (text.find(x) for x in self.cfg.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop_string"
        if reason is None and len(s.committed) >= self.cfg.max_length:
            reason = "length"
        if reason is None and not (final or s.ahead is None or len(s.ahead) == 0):
            return
        s.done = True
        s.stop_reason = reason or "length"
        s.text = text
        s.ahead = None

    def _result(self, s: _State) -> DecodeResult:
        stats = dict(s.stats)
        stats["stop_reason"] = s.stop_reason
        stats["refinement_end"] = s.refinement_end
        return DecodeResult(s.prompt, s.text, list(s.committed), stats, s.trace)

    # ---------------------------------------------------------------- stages

    def _rollouts(self, rows) -> list[_Ahead]:
        """Batched rollouts of ``(prompt ids, budget, key)`` rows, ``batch_size`` rows a call.

        Short chunks are padded with one-token filler rows, so one program serves every chunk
        (like ``refine_batch``); a row's tokens do not depend on its company.
        """
        cfg = self.cfg
        out: list[_Ahead] = []
        for start in range(0, len(rows), cfg.batch_size):
            chunk = rows[start : start + cfg.batch_size]
            n = len(chunk)
            padded = chunk + [(chunk[0][0], 1, chunk[0][2])] * (cfg.batch_size - n)
            res = rollout(
                self.lm,
                [r[0] for r in padded],
                jnp.stack([r[2] for r in padded]),
                max_new_tokens=[r[1] for r in padded],
                sampling=cfg.rollout,
                eos_ids=self.eos_ids,
                stop_strings=cfg.stop_strings,
                tokenizer=self.tokenizer,
                return_logits=True,
                return_hidden=self._latents,
            )
            top1, ent, amax = (np.asarray(a) for a in _position_stats(res.logits))
            tokens, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
            calls = np.asarray(res.model_calls)
            store = res.hidden if self._latents else res.logits
            for j in range(n):
                m = int(lengths[j])
                out.append(
                    _Ahead(
                        tokens=tokens[j, :m].copy(),
                        argmax=amax[j, :m].copy(),
                        top1=top1[j, :m].copy(),
                        entropy=ent[j, :m].copy(),
                        store=store[j, :m],
                        calls=int(calls[j]),
                    )
                )
        return out

    def _empty_ahead(self) -> _Ahead:
        width = self.lm.config.hidden_size if self._latents else self.lm.config.vocab_size
        empty = np.zeros((0,), np.int32)
        return _Ahead(empty, empty, np.zeros(0), np.zeros(0), jnp.zeros((0, width)))

    def _cheap_mask(self, ah: _Ahead) -> np.ndarray:
        cfg = self.cfg
        mask = np.ones(len(ah), bool)
        if cfg.confidence_threshold is not None:
            mask &= ah.rest("top1") <= cfg.confidence_threshold
        if cfg.entropy_threshold:
            mask &= ah.rest("entropy") >= cfg.entropy_threshold
        return mask

    def _window(self, s: _State, start: int) -> tuple[RefineProblem, int]:
        """The DTO / probe window of ``s`` at ahead offset ``start`` (relative) and its size."""
        ah = s.ahead
        lo = ah.offset + start
        k = len(ah) - start
        if self.cfg.dto_window is not None:
            k = min(k, self.cfg.dto_window)
        before = ah.tokens[ah.offset : lo].tolist()
        tail = ah.argmax[lo + k :].tolist()
        problem = RefineProblem(
            lm_prefix_ids=s.lm_prompt + s.committed + before,
            rm_prefix_ids=s.rm_prefix + s.committed + before,
            rm_suffix_ids=tail + s.rm_suffix,
            init=ah.store[lo : lo + k],
        )
        return problem, k

    def _select(self, active: list[_State]) -> list[_State]:
        """Commit up to each prompt's selected position; return the prompts that selected one."""
        cfg = self.cfg
        cheap = {id(s): self._cheap_mask(s.ahead) for s in active}
        selected: dict[int, int | None] = {}
        cursor = dict.fromkeys((id(s) for s in active), 0)
        searching = list(active)
        while searching:
            starts = {}
            for s in searching:
                cands = np.flatnonzero(cheap[id(s)][cursor[id(s)] :])
                if cands.size == 0:
                    selected[id(s)] = None
                else:
                    starts[id(s)] = cursor[id(s)] + int(cands[0])
            searching = [s for s in searching if id(s) in starts]
            if not cfg.uses_probe:
                for s in searching:
                    selected[id(s)] = starts[id(s)]
                break
            if not searching:
                break
            windows = [self._window(s, starts[id(s)]) for s in searching]
            keys = [s.key(_PROBE, s.stats["probes"]) for s in searching]
            norms = window_grad_norms(
                self.lm,
                self.rm,
                [w[0] for w in windows],
                cfg.dto,
                batch_size=cfg.batch_size,
                problem_keys=keys,
            )
            still = []
            for s, (_, k), g in zip(searching, windows, norms, strict=True):
                s.stats["probes"] += 1
                s.count_calls("probe_calls", cfg.dto.calls_per_full_step)
                lo = starts[id(s)]
                ok = cheap[id(s)][lo : lo + k] & (np.asarray(g) >= cfg.grad_threshold)
                if ok.any():
                    selected[id(s)] = lo + int(np.argmax(ok))
                elif lo + k >= len(s.ahead):
                    selected[id(s)] = None
                else:
                    cursor[id(s)] = lo + k
                    still.append(s)
            searching = still
        chosen = []
        for s in active:
            pos = selected[id(s)]
            if pos is None:
                s.refinement_end = "converged"
                self._commit(s, len(s.ahead))
                self._check_stop(s, final=True)
                continue
            self._commit(s, pos)
            self._check_stop(s)
            if not s.done:
                chosen.append(s)
        return chosen

    def _refine(self, chosen: list[_State]):
        """Logits ``[B, V]`` of position 0 after DTO (or unrefined, without DTO)."""
        cfg = self.cfg
        if not cfg.use_dto:
            first = jnp.stack([jnp.asarray(s.ahead.store[s.ahead.offset]) for s in chosen])
            return _head_logits(self.lm, first) if self._latents else first
        windows = [self._window(s, 0) for s in chosen]
        keys = [s.key(_DTO, s.stats["refinements"]) for s in chosen]
        results = refine_batch(
            self.lm,
            self.rm,
            [w[0] for w in windows],
            cfg.dto,
            keys[0],
            batch_size=cfg.batch_size,
            problem_keys=keys,
            mesh=self.mesh,
        )
        for s, (_, k), res in zip(chosen, windows, results, strict=True):
            s.stats["refinements"] += 1
            s.stats["optimized_tokens"] += k * cfg.dto.num_steps
            s.count_calls("dto_calls", res.model_calls)
        return jnp.stack([res.logits[0] for res in results])

    def _resample(self, chosen: list[_State], logits0) -> list[int]:
        n = len(chosen)
        width = max(n, self.cfg.batch_size)
        keys = [s.key(_RESAMPLE, s.stats["iterations"]) for s in chosen]
        keys = jnp.stack(keys + [keys[0]] * (width - n))
        logits = jnp.concatenate([logits0, jnp.repeat(logits0[:1], width - n, axis=0)])
        drawn = np.asarray(_sample_rows(keys, logits.astype(jnp.float32), self.cfg.resample))
        return [int(t) for t in drawn[:n]]

    def _propose(self, proposing) -> list[_Ahead]:
        """Roll out ``committed ++ [new token]`` for each proposing prompt (+1 generation)."""
        conts: list[_Ahead | None] = [None] * len(proposing)
        rows, where = [], []
        for i, (s, tok) in enumerate(proposing):
            budget = self.cfg.max_length - len(s.committed) - 1
            if tok in self._eos or budget <= 0:
                conts[i] = self._empty_ahead()
                s.stats["generations"] += 1
                continue
            ids = s.lm_prompt + s.committed + [tok]
            rows.append((ids, budget, s.key(_ROLLOUT, s.stats["generations"])))
            where.append(i)
        for i, ahead in zip(where, self._rollouts(rows) if rows else [], strict=True):
            self._take_rollout(proposing[i][0], ahead)
            conts[i] = ahead
        return conts

    def _rm_input(self, s: _State, response: list[int]) -> list[int]:
        """RM input for a full response: template prefix ++ response ++ suffix (EOS dropped)."""
        body = list(response)
        if body and body[-1] in self._eos:
            body = body[:-1]
        return s.rm_prefix + body + s.rm_suffix

    def _accept(self, proposing, conts) -> list[tuple[bool, float | None, float | None]]:
        if not proposing:
            return []
        if not self.cfg.rejection_sampling:
            return [(True, None, None)] * len(proposing)
        seqs = []
        for (s, tok), cont in zip(proposing, conts, strict=True):
            current = s.committed + s.ahead.rest("tokens").tolist()
            proposed = s.committed + [tok] + cont.tokens.tolist()
            seqs += [self._rm_input(s, current), self._rm_input(s, proposed)]
        scores = self._score(seqs)
        out = []
        for i, (s, _) in enumerate(proposing):
            cur, prop = float(scores[2 * i]), float(scores[2 * i + 1])
            s.count_calls("score_calls", 2)
            s.stats["rewarded_tokens"] += len(seqs[2 * i]) + len(seqs[2 * i + 1])
            out.append((prop > cur, cur, prop))
        return out

    def _score(self, seqs: list[list[int]]) -> np.ndarray:
        if self.scorer is not None:
            scores = np.asarray(self.scorer(seqs), np.float64).reshape(-1)
            if scores.shape != (len(seqs),):
                raise ValueError(f"scorer returned {scores.shape[0]} scores for {len(seqs)} inputs")
            return scores
        pad = self.rm.config.pad_token_id if self.rm.config.pad_token_id is not None else 0
        out = []
        step = 2 * self.cfg.batch_size
        for start in range(0, len(seqs), step):
            chunk = seqs[start : start + step]
            rows = chunk + [chunk[0]] * (step - len(chunk))
            ids, mask = pad_prompts(rows, bucket_length(max(len(r) for r in rows)), pad)
            scores = np.asarray(_score_padded(self.rm, jnp.asarray(ids), jnp.asarray(mask)))
            out.append(scores[: len(chunk)])
        return np.concatenate(out)
