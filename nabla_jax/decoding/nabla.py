"""The ∇-Reasoner decoder: ``NablaDecoder(lm, rm, cfg).generate(prompts, key)``.

Each prompt carries its own state — the committed response tokens, the *ahead* tokens (the rest
of its latest rollout, with the logits or, in latents mode, the hidden states they were sampled
from), counters and events — in the fixed-shape buffers of :mod:`nabla_jax.decoding.state`. The
loop itself runs on the device (:mod:`nabla_jax.decoding.loop`): ``cfg.batch_size`` slots
iterate in a ``lax.while_loop`` inside one compiled program per prompt-length bucket; when a
slot finishes, the host reads its result and inserts the next waiting prompt. Every number
(thresholds, temperatures, DTO hyperparameters, the generation budget) is a run-time value, so
changing one reuses the compiled program.

Differences from the public code, on purpose:

* the acceptance test renders the current and the proposed response *identically* (RM chat
  template prefix ++ response ++ suffix, the prompt once, a trailing EOS dropped from both);
* the gradient probe is counted: ``calls_per_full_step`` model calls per probe;
* the DTO window is the rest of the rollout capped at ``dto_window`` tokens (default 32). The
  reward model still sees the whole response (the ahead tokens past the window enter as the
  argmax of their logits); only the LM log-likelihood stops at the window's end.
  ``dto_window=None`` optimizes the whole rest. The probe uses the same windows; when no
  position of a probed window qualifies, the next window is probed (each probe counted);
* ``max_n_generations`` is never exceeded.

Randomness: see :mod:`nabla_jax.decoding.keys` — a prompt decodes the same alone or in any
batch. Model calls per prompt: one per generated token of every rollout, ``calls_per_full_step``
per full DTO step and per probe, one per RM scoring (2 per acceptance test).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from nabla_jax.decoding.config import DecodeConfig
from nabla_jax.decoding.flops import nabla_flops
from nabla_jax.decoding.keys import check_key, prompt_id
from nabla_jax.decoding.loop import ChunkLimits, run_chunk, run_chunk_exported
from nabla_jax.decoding.pair import check_pair, model_pair
from nabla_jax.decoding.results import DecodeResult, row_result
from nabla_jax.decoding.state import Inserts, empty_state
from nabla_jax.decoding.stopping import default_eos_ids, stop_tables
from nabla_jax.functional.step_reward import StepReward, rm_frame
from nabla_jax.models.model import CausalLM, RewardModel
from nabla_jax.models.partition import shard_model
from nabla_jax.runtime import compilation_cache, exported, sharding
from nabla_jax.runtime.buckets import bucket_length, pad_ids
from nabla_jax.runtime.profiling import device_get
from nabla_jax.text.templates import (
    build_messages,
    lm_prompt_ids,
    rm_prefix_suffix_ids,
)
from nabla_jax.text.vocab_map import unmatched_ids

__all__ = ["DecodeConfig", "DecodeResult", "NablaDecoder"]

_NO_LIMIT = 1 << 30


class NablaDecoder:
    """∇-Reasoner decoding: ``NablaDecoder(lm, rm, cfg).generate(prompts, key)``.

    Args:
      lm: the policy (``CausalLM``) with a tokenizer that has a chat template.
      rm: the reward model (``RewardModel``); its tokenizer's chat template (or the LM's, when
        the RM has no tokenizer) frames the response for the reward terms.
      cfg: a ``DecodeConfig``.
      rm_vocab: how the RM reads LM token ids — ``"shared"`` (as they are), ``"by_string"``
        (an LM-id → RM-id table by token string: a reward model whose vocabulary adds tokens or
        pads rows, e.g. a Qwen3 RM for a Qwen2.5 policy) or None (the one that applies; see
        :mod:`nabla_jax.decoding.pair`). ``decoder.rm_vocabulary.vocab_map.coverage`` reports
        the LM tokens with no RM match.
      next_token_oracle: optional host function ``(prompt_ids, response_ids) -> right next
        token id, or -1``: each refinement's trace then records the right token's probability
        before and after DTO (``p_right_before`` / ``p_right_after``; see
        :mod:`nabla_jax.decoding.diagnostics`). For a task whose problems carry reference
        solutions (the bundled one): ``nabla_jax.tasks.oracle.ReferenceNextToken``.
      mesh: optional ``jax.sharding.Mesh`` ("data", "model"): the models' weights are split
        over "model" and the slots over "data" (``cfg.batch_size`` must divide by it).
      scorer: optional acceptance-test scorer: called with a list of full RM input id lists
        (RM prefix ++ response ++ RM suffix), returns one float per list; it runs on the host
        from inside the compiled loop. Default: the reward model's score. DTO always uses the
        reward model; this hook only replaces the test.

    Constructing a decoder turns JAX's persistent compilation cache on
    (``nj.compilation_cache.use_default``; off with ``NABLA_JAX_CACHE_DIR=off`` or
    ``nj.compilation_cache.disable()``), so a second process loads the loop's programs; with
    the cache on, and no scorer, oracle or mesh, the loop itself is also kept serialized
    beside it (``nabla_jax.runtime.exported``; ``decoder.programs``), so that process neither
    traces nor lowers it.
    """

    def __init__(
        self,
        lm: CausalLM,
        rm: RewardModel,
        cfg: DecodeConfig | None = None,
        *,
        scorer: Callable[[list[list[int]]], Sequence[float]] | None = None,
        mesh=None,
        rm_vocab: str | None = None,
        next_token_oracle: Callable[[Sequence[int], Sequence[int]], int] | None = None,
    ):
        cfg = DecodeConfig() if cfg is None else cfg
        if not isinstance(cfg, DecodeConfig):
            raise TypeError(f"cfg must be a DecodeConfig, got {type(cfg).__name__}")
        if scorer is not None and not callable(scorer):
            raise TypeError("scorer must be callable: list of RM input id lists -> scores")
        if next_token_oracle is not None and not callable(next_token_oracle):
            raise TypeError("next_token_oracle must be callable: (prompt ids, response ids) -> id")
        if cfg.oracle_proposals and next_token_oracle is None:
            raise ValueError(
                "DecodeConfig.oracle_proposals=True proposes the next-token oracle's right "
                "token: pass next_token_oracle=... (e.g. nabla_jax.tasks.oracle."
                "ReferenceNextToken(task, problems, lm.tokenizer)), "
                "or set oracle_proposals=False"
            )
        self.next_token_oracle = next_token_oracle
        checked = check_pair(lm, rm, "the decoder", rm_vocab)
        self.rm_tokenizer, self.rm_vocabulary = checked
        if mesh is not None:
            if isinstance(rm, StepReward):
                raise ValueError(
                    "a StepReward (a process reward model read per step) decodes on one device "
                    "for now: drop mesh="
                )
            sharding.check_batch_divisible(cfg.batch_size, mesh, "DecodeConfig.batch_size")
            lm, rm = shard_model(lm, mesh), shard_model(rm, mesh)
        self.mesh = mesh
        self.lm, self.rm, self.cfg, self.scorer = lm, rm, cfg, scorer
        self.tokenizer = lm.tokenizer
        self.eos_ids = cfg.eos_ids if cfg.eos_ids is not None else default_eos_ids(lm)
        self._eos = set(self.eos_ids)
        stop_ids = [self.tokenizer.encode(s, add_special_tokens=False) for s in cfg.stop_strings]
        self._tables = stop_tables(self.eos_ids, stop_ids)
        self._models = model_pair(lm, rm, self.rm_vocabulary)
        self._pad = lm.config.pad_token_id if lm.config.pad_token_id is not None else 0
        # Waiting prompts enter when this many slots are free: a first rollout then serves
        # several new rows at once instead of running the whole batch's loop for one.
        self._refill_at = max(1, cfg.batch_size // 2)
        compilation_cache.use_default()
        # Serialized loop programs beside the XLA cache; host callbacks (a scorer, an oracle)
        # and sharded arrays cannot be serialized, so those decodes trace as before.
        plain = mesh is None and scorer is None and next_token_oracle is None
        self.programs = exported.default_store() if plain else None

    # ---------------------------------------------------------------- public API

    def generate(
        self,
        prompts: Sequence[Any],
        key,
        *,
        progress: bool = False,
        chunk_iterations: int | None = None,
    ) -> list[DecodeResult]:
        """Decode every prompt (a user message string or a list of chat messages).

        Args:
          prompts: the prompts; ``cfg.batch_size`` of them decode at once, and a finished one
            makes room for the next.
          key: a ``jax.random`` key. Each prompt's randomness derives from it and the prompt's
            content only, so the result for a prompt does not depend on its company.
          progress: show a progress bar of finished prompts and generations.
          chunk_iterations: return to the host after at most this many iterations (progress
            updates); default: only when a slot frees up (or every 16 iterations with
            ``progress``). Results do not depend on it.
        Returns:
          one :class:`DecodeResult` per prompt, in input order.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError("prompts must be a list of prompts (wrap one prompt in a list)")
        if not prompts:
            return []
        check_key(key, "NablaDecoder.generate")
        rows = [self._encode(i, p) for i, p in enumerate(prompts)]
        cfg = self.cfg
        b = cfg.batch_size
        p_len = bucket_length(max(len(r[0]) for r in rows))
        q_len = bucket_length(max(max(len(r[1]) for r in rows), 1))
        s_len = bucket_length(max(max(len(r[2]) for r in rows), 1))
        state = self._empty_state(p_len, q_len, s_len)
        key = (
            key
            if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
            else (jax.random.wrap_key_data(key))
        )
        if chunk_iterations is None:
            chunk_iterations = 16 if progress else _NO_LIMIT
        pending = collections.deque(range(len(prompts)))
        slot_of = [-1] * b
        results: list[DecodeResult | None] = [None] * len(prompts)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="∇-Reasoner", unit="prompt", disable=not progress)
        hyper, prog = cfg.hyper(), cfg.program()
        while pending or any(s >= 0 for s in slot_of):
            ins = self._inserts(rows, pending, slot_of, p_len, q_len, s_len)
            limits = ChunkLimits(
                max_iters=np.int32(chunk_iterations),
                refill=np.int32(min(len(pending), self._refill_at)),
            )
            if self.programs is not None:
                state, report = run_chunk_exported(
                    self.programs, self._models, state, inserts=ins, key=key, hyper=hyper,
                    tables=self._tables, limits=limits, prog=prog, pad_id=self._pad,
                )  # fmt: skip
            else:
                state, report = run_chunk(
                    self._models, state, inserts=ins, key=key, hyper=hyper,
                    tables=self._tables, limits=limits, prog=prog, scorer=self.scorer,
                    pad_id=self._pad, oracle=self.next_token_oracle,
                )  # fmt: skip
            rep = device_get(report)
            for slot, i in enumerate(slot_of):
                if i >= 0 and rep.finished[slot]:
                    self._check_finite(rep, slot, i)
                    results[i] = row_result(
                        prompts[i], rep, slot, self.tokenizer, self._eos, cfg.stop_strings
                    )
                    results[i].stats["flops"] = nabla_flops(
                        self.lm.config, self.rm.config, results[i].stats, prompt=p_len,
                        rm_prefix=q_len, rm_suffix=s_len, length=cfg.max_length,
                        window=cfg.window, paper_objective=cfg.dto.objective == "paper",
                    )  # fmt: skip
                    if self.rm_vocabulary.vocab_map is not None:  # by_string: what the RM missed
                        ids = rows[i][0] + results[i].token_ids
                        missed = unmatched_ids(self.rm_vocabulary.vocab_map, ids)
                        results[i].stats["rm_unmatched_tokens"] = len(missed)
                    slot_of[slot] = -1
            bar.n = sum(r is not None for r in results)
            bar.set_postfix(generations=int(rep.counters.generations.sum()))
            bar.refresh()
        bar.close()
        return results

    def generate_one(self, prompt: Any, key) -> DecodeResult:
        """``generate([prompt], key)[0]`` (the same result the prompt gets in any batch)."""
        return self.generate([prompt], key)[0]

    # ---------------------------------------------------------------- host side

    def check_prompts(self, prompts: Sequence[Any], names: Sequence[str] | None = None) -> None:
        """Render and measure every prompt as :meth:`generate` would, without any model call:
        a ``ValueError`` names the first empty, unrenderable or over-long one (``names[i]``, e.g.
        its file and line, or "prompt i")."""
        for i, p in enumerate(prompts):
            label = f"prompt {i}" if names is None else names[i]
            try:
                self._encode(i, p, label)
            except ValueError:
                raise
            except Exception as e:  # a chat template that fails on this prompt (jinja, ...)
                raise ValueError(
                    f"{label}: the chat template cannot render it ({type(e).__name__}: {e})"
                ) from e

    def _encode(self, i: int, prompt, name: str | None = None):
        """(LM prompt ids, RM prefix ids, RM suffix ids, prompt id), checked against the
        models' positions before any compute."""
        label = name or f"prompt {i}"
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise ValueError(f"{label} is empty; give the text to decode")
        system = self.cfg.system
        lm_ids = lm_prompt_ids(self.tokenizer, prompt, system=system)
        rm_prefix, rm_suffix = rm_frame(
            self.rm, *rm_prefix_suffix_ids(self.rm_tokenizer, prompt, system=system)
        )
        n = self.cfg.max_length
        for what, model, used in (
            ("LM", self.lm, len(lm_ids) + n),
            ("RM", self.rm, len(rm_prefix) + n + len(rm_suffix)),
        ):
            limit = model.config.max_position_embeddings
            if used > limit:
                raise ValueError(
                    f"{label}: its {what} input ({used - n} template tokens) plus max_length "
                    f"{n} is {used} tokens, more than the {what}'s {limit} positions; shorten "
                    "the prompt or lower DecodeConfig.max_length"
                )
        return lm_ids, rm_prefix, rm_suffix, prompt_id(build_messages(prompt, system=system))

    def _inserts(self, rows, pending, slot_of, p_len, q_len, s_len) -> Inserts:
        """Host arrays putting the next waiting prompts into the free slots."""
        b = self.cfg.batch_size
        take = np.zeros((b,), bool)
        lm_rows, pre_rows, suf_rows = [[1]] * b, [[]] * b, [[]] * b
        pid = np.zeros((b,), np.uint32)
        for slot in range(b):
            if slot_of[slot] < 0 and pending:
                i = pending.popleft()
                slot_of[slot] = i
                take[slot] = True
                lm_rows[slot], pre_rows[slot], suf_rows[slot], pid[slot] = rows[i]
        lm_ids, lm_mask = pad_ids(lm_rows, p_len, left=True, pad_id=self._pad)
        pre_ids, pre_mask = pad_ids(pre_rows, q_len, left=True)
        suf_ids, suf_mask = pad_ids(suf_rows, s_len, left=False)
        ins = Inserts(take, lm_ids, lm_mask, pre_ids, pre_mask, suf_ids, suf_mask, pid)
        if self.mesh is not None:
            ins = sharding.shard_batch(ins, self.mesh)
        return ins

    def _empty_state(self, p_len, q_len, s_len):
        cfg = self.cfg
        state = _empty_state_jit(
            self.lm, self.rm, cfg.batch_size, p_len, q_len, s_len, cfg.max_length, cfg.window,
            latents=cfg.dto.mode == "latents", events=cfg.max_length * cfg.refine_passes,
        )  # fmt: skip
        if self.mesh is not None:
            state = _shard_state(state, self.mesh)
        return state

    def _check_finite(self, rep, slot: int, i: int) -> None:
        if self.cfg.dto.on_nonfinite == "raise" and int(rep.counters.nonfinite[slot]):
            raise FloatingPointError(
                f"non-finite DTO loss while refining prompt {i}; lower learning_rate, check the "
                "models' dtype, or set DTOConfig(on_nonfinite='flag') to keep going"
            )


def _shard_state(state, mesh):
    """Slots over the mesh's "data" axis: the batch axis of every leaf (axis 1 of the KV caches,
    whose leading axis is the layer)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from nabla_jax.models.layers import KVCache

    def put(x, axis):
        sharding.check_batch_divisible(x.shape[axis], mesh, "DecodeConfig.batch_size")
        spec = P(*([None] * axis + [sharding.DATA]))
        return jax.device_put(x, NamedSharding(mesh, spec))

    def walk(x):
        if isinstance(x, KVCache):
            return KVCache(put(x.k, 1), put(x.v, 1))
        return put(x, 0)

    return jax.tree.map(walk, state, is_leaf=lambda x: isinstance(x, KVCache))


_empty_state_jit = jax.jit(
    empty_state, static_argnums=tuple(range(2, 8)), static_argnames=("latents", "events")
)
