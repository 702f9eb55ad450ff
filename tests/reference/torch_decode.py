"""Eager PyTorch twin of the whole ∇-Reasoner decode loop, one prompt at a time.

Written from the module docstring of ``nabla_jax/decoding/nabla.py`` and
docs/algorithm.md#the-decoding-loop, and run the way the public ∇-Reasoner code runs: Hugging Face
``transformers`` models in float32, Hugging Face ``generate`` with its KV cache for every rollout,
the DTO twin (``torch_dto.paper_dto``) for the refinement, the sequence-classification head for the
acceptance test. Only the token ids of the chat templates come from
``nabla_jax.text.templates`` (the same ids both sides feed their models).

Per prompt:

1. roll out ``max_length`` tokens from the LM prompt (one model call per generated token);
2. per iteration, while not done:

   * stop refining once ``max_n_generations`` rollouts were made (commit the rest);
   * **select** the first ahead position with top-1 probability ≤ ``confidence_threshold`` (and
     entropy ≥ ``entropy_threshold`` when set); none: commit the rest and stop ("converged");
     else commit the tokens before it;
   * **refine** the window of ``dto_window`` ahead tokens from there (DTO twin; 4 calls per full
     step): the LM sees ``prompt ++ committed ++ window``, the RM ``prefix ++ committed ++ window ++
     argmax(rest of the ahead logits) ++ suffix``;
   * **resample** position 0 of the refined logits (``torch_sampling`` filters; greedy at τ 0),
     without the current token when ``resample_excludes_current`` is set;
   * if the token changed, **propose**: roll out ``committed ++ [token]`` (one more generation;
     none for an EOS token or an exhausted budget) and accept iff the RM scores
     ``committed ++ [token] ++ continuation`` above ``committed ++ ahead`` (by more than
     ``accept_margin`` when set; both rendered as RM
     prefix ++ response ++ suffix, a trailing EOS dropped; 2 model calls). Accepted: commit the
     token, the continuation becomes the ahead. Otherwise commit the current token 0;
   * stop on EOS in the committed tokens, at ``max_length``, or when the ahead is used up.

The gradient-norm probe (``grad_threshold``), latents mode, stop strings and Gumbel noise are not
part of the twin (``TorchNablaDecoder`` refuses configs that need them).
Randomness (τ > 0) comes from a ``torch.Generator`` seeded per prompt: runs are reproducible, but
they do not reproduce JAX's random draws; parity is exact at τ 0 only.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from nabla_jax.text.templates import lm_prompt_ids, rm_prefix_suffix_ids
from tests.reference import torch_dto, torch_sampling

COUNTERS = (
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


def load_hf_pair(lm_dir, rm_dir):
    """(lm, rm, lm_tokenizer, rm_tokenizer): the HF models in float32, eval mode."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
    return lm, rm, AutoTokenizer.from_pretrained(lm_dir), AutoTokenizer.from_pretrained(rm_dir)


@dataclasses.dataclass
class Ahead:
    """A rollout: its tokens and the raw logits each was drawn from; ``offset`` are consumed."""

    tokens: list[int]
    logits: torch.Tensor  # [n, V]
    offset: int = 0

    def __len__(self) -> int:
        return len(self.tokens) - self.offset

    def rest(self) -> list[int]:
        return self.tokens[self.offset :]


@dataclasses.dataclass
class TwinResult:
    prompt: object
    text: str
    token_ids: list[int]
    stats: dict
    trace: list


class TorchNablaDecoder:
    """``TorchNablaDecoder(lm, rm, lm_tok, rm_tok, cfg).generate(prompts, seed)``.

    ``cfg`` is a ``nabla_jax`` ``DecodeConfig`` (read as plain settings).
    """

    def __init__(self, lm, rm, lm_tokenizer, rm_tokenizer, cfg):
        if cfg.grad_threshold is not None:
            raise NotImplementedError("the twin has no gradient-norm probe (grad_threshold)")
        if cfg.stop_strings:
            raise NotImplementedError("the twin has no stop strings")
        dto = cfg.dto
        if dto.objective != "paper" or dto.mode != "logits" or dto.gumbel_scale or not dto.hard:
            raise NotImplementedError("the twin runs the paper's DTO on logits, without noise")
        self.lm, self.rm, self.cfg = lm, rm, cfg
        self.tok, self.rm_tok = lm_tokenizer, rm_tokenizer
        eos = cfg.eos_ids
        if eos is None:
            conf = lm.config.eos_token_id
            eos = set(conf if isinstance(conf, (list, tuple)) else [] if conf is None else [conf])
            if lm_tokenizer.eos_token_id is not None:
                eos.add(int(lm_tokenizer.eos_token_id))
        self.eos = sorted(eos)
        pad = lm.config.pad_token_id
        self.pad_id = pad if pad is not None else self.eos[0]

    # ------------------------------------------------------------------ models

    @torch.no_grad()
    def rollout(self, ids: list[int], budget: int, gen: torch.Generator) -> Ahead:
        """HF ``generate`` (KV cache) of up to ``budget`` tokens, with the raw logits."""
        s = self.cfg.rollout
        greedy = s.temperature == 0
        # top_k=0 switches HF's top-k off (None would mean its default of 50)
        kw = {} if greedy else dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        ctx = contextlib.nullcontext() if greedy else torch.random.fork_rng()
        with ctx:
            if not greedy:  # HF samples from the global RNG: seed it from this prompt's stream
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
            out = self.lm.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=budget,
                do_sample=not greedy,
                eos_token_id=self.eos,
                pad_token_id=self.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
                **kw,
            )
        new = out.sequences[0, len(ids) :].tolist()
        return Ahead(new, torch.cat(out.logits, dim=0)[: len(new)].float())

    @torch.no_grad()
    def score(self, ids: list[int]) -> float:
        return float(self.rm(input_ids=torch.tensor([ids])).logits[0].mean())

    def refine(self, st: dict, k: int) -> tuple[torch.Tensor, int]:
        """DTO of the ahead window of ``k`` tokens: (refined logits of position 0, model calls)."""
        ah, d = st["ahead"], self.cfg.dto
        lo = ah.offset
        tail = ah.logits[lo + k :].argmax(dim=-1).tolist()
        res = torch_dto.paper_dto(
            self.lm,
            self.rm,
            st["lm_prompt"] + st["committed"],
            st["rm_prefix"] + st["committed"],
            tail + st["rm_suffix"],
            ah.logits[lo : lo + k],
            num_steps=d.num_steps,
            learning_rate=d.learning_rate,
            weight_decay=d.weight_decay,
            optimizer=d.optimizer,
            schedule=d.schedule,
            warmup_steps=d.num_warmup,
            min_lr_ratio=d.min_lr_ratio,
            reward_coeff=d.reward_coeff,
            nll_coeff=d.nll_coeff,
            tau=d.tau,
            update_postfix=d.update_postfix,
            grad_caching=d.grad_caching,
        )
        return res["logits"][0], res["model_calls"]

    def resample(self, logits: torch.Tensor, current: int, gen: torch.Generator) -> int:
        s = self.cfg.resample
        if self.cfg.resample_excludes_current:  # every selected position proposes
            logits = logits.clone()
            logits[current] = float("-inf")
        if s.temperature == 0:
            return int(logits.argmax())
        filtered = torch_sampling.filter_logits(logits, s.temperature, s.top_k, s.top_p)
        return int(torch.multinomial(torch.softmax(filtered, -1), 1, generator=gen))

    # ------------------------------------------------------------------ loop

    def generate(self, prompts, seed: int = 0) -> list[TwinResult]:
        return [self.generate_one(p, seed) for p in prompts]

    def generate_one(self, prompt, seed: int = 0) -> TwinResult:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(seed)
        rm_prefix, rm_suffix = rm_prefix_suffix_ids(self.rm_tok, prompt, system=cfg.system)
        st = dict(
            lm_prompt=lm_prompt_ids(self.tok, prompt, system=cfg.system),
            rm_prefix=rm_prefix,
            rm_suffix=rm_suffix,
            committed=[],
            stats=dict.fromkeys(COUNTERS, 0),
            trace=[],
            done=False,
            refinement_end="stopped",
        )
        stats = st["stats"]
        st["ahead"] = self._take(st, self.rollout(st["lm_prompt"], cfg.max_length, gen))
        self._check_stop(st)
        while not st["done"]:
            if stats["generations"] >= cfg.max_n_generations:
                st["refinement_end"] = "max_generations"
                self._commit(st, len(st["ahead"]))
                self._check_stop(st, final=True)
                break
            stats["iterations"] += 1
            pos = self._select(st["ahead"])
            if pos is None:
                st["refinement_end"] = "converged"
                self._commit(st, len(st["ahead"]))
                self._check_stop(st, final=True)
                break
            self._commit(st, pos)
            self._check_stop(st)
            if st["done"]:
                break
            ah = st["ahead"]
            k = len(ah) if cfg.dto_window is None else min(len(ah), cfg.dto_window)
            if cfg.use_dto:
                logits0, calls = self.refine(st, k)
                stats["refinements"] += 1
                stats["optimized_tokens"] += k * cfg.dto.num_steps
                self._count(st, "dto_calls", calls)
            else:
                logits0 = ah.logits[ah.offset]
            old = ah.tokens[ah.offset]
            new = self.resample(logits0, old, gen)
            event = dict(position=len(st["committed"]), old_token=old, new_token=old)
            event.update(proposed=False, accepted=None, score_current=None, score_proposed=None)
            if new != old:
                cont = self._propose(st, new, gen)
                accepted, cur, prop = self._accept(st, new, cont)
                event.update(new_token=new, proposed=True, accepted=accepted)
                event.update(score_current=cur, score_proposed=prop)
                if accepted:
                    st["committed"].append(new)
                    st["ahead"] = cont
                else:
                    stats["rejections"] += 1
                    self._commit(st, 1)
            else:
                self._commit(st, 1)
            st["trace"].append(event)
            self._check_stop(st)
        stats = dict(stats, stop_reason=st["stop_reason"], refinement_end=st["refinement_end"])
        return TwinResult(prompt, st["text"], list(st["committed"]), stats, st["trace"])

    # ------------------------------------------------------------------ stages

    def _count(self, st: dict, part: str, n: int) -> None:
        st["stats"][part] += int(n)
        st["stats"]["model_calls"] += int(n)

    def _take(self, st: dict, ahead: Ahead) -> Ahead:
        st["stats"]["generations"] += 1
        st["stats"]["generated_tokens"] += len(ahead.tokens)
        self._count(st, "rollout_calls", len(ahead.tokens))
        return ahead

    def _commit(self, st: dict, n: int) -> None:
        ah = st["ahead"]
        st["committed"] += ah.tokens[ah.offset : ah.offset + n]
        ah.offset += n

    def _select(self, ah: Ahead) -> int | None:
        logp = torch.log_softmax(ah.logits[ah.offset :], dim=-1)
        p = logp.exp()
        ok = torch.ones(len(ah), dtype=torch.bool)
        if self.cfg.confidence_threshold is not None:
            ok &= p.max(dim=-1).values <= self.cfg.confidence_threshold
        if self.cfg.entropy_threshold:
            entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
            ok &= entropy >= self.cfg.entropy_threshold
        hits = torch.nonzero(ok).flatten()
        return int(hits[0]) if len(hits) else None

    def _propose(self, st: dict, token: int, gen: torch.Generator) -> Ahead:
        budget = self.cfg.max_length - len(st["committed"]) - 1
        if token in self.eos or budget <= 0:
            st["stats"]["generations"] += 1
            return Ahead([], torch.zeros(0, self.lm.config.vocab_size))
        ids = st["lm_prompt"] + st["committed"] + [token]
        return self._take(st, self.rollout(ids, budget, gen))

    def _rm_input(self, st: dict, response: list[int]) -> list[int]:
        body = response[:-1] if response and response[-1] in self.eos else response
        return st["rm_prefix"] + body + st["rm_suffix"]

    def _accept(self, st: dict, token: int, cont: Ahead):
        if not self.cfg.rejection_sampling:
            return True, None, None
        current = self._rm_input(st, st["committed"] + st["ahead"].rest())
        proposed = self._rm_input(st, st["committed"] + [token] + cont.tokens)
        cur, prop = self.score(current), self.score(proposed)
        self._count(st, "score_calls", 2)
        st["stats"]["rewarded_tokens"] += len(current) + len(proposed)
        margin = 0.0 if self.cfg.accept_margin is None else self.cfg.accept_margin
        return prop > cur + margin, cur, prop

    def _check_stop(self, st: dict, final: bool = False) -> None:
        committed = st["committed"]
        end = next((i for i, t in enumerate(committed) if t in self.eos), None)
        reason = None if end is None else "eos"
        body = committed if end is None else committed[:end]
        if reason is None and len(committed) >= self.cfg.max_length:
            reason = "length"
        ah = st["ahead"]
        if reason is None and not (final or ah is None or len(ah) == 0):
            return
        st.update(done=True, stop_reason=reason or "length", text=self.tok.decode(body), ahead=None)
