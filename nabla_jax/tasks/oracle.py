"""An exact acceptance scorer from a task's oracle, for ∇-Reasoner's acceptance test and
Best-of-N's ranking in place of the reward model.

The decoders call an acceptance scorer with full RM input id lists (RM template prefix ++
response ++ RM template suffix). :class:`OracleScorer` knows the benchmark's problems: it maps
each list back to its problem by the template prefix (which holds the prompt), decodes the
response ids with the LM tokenizer and returns ``task.oracle(problem, response_text)``. This
separates how good the proposals are from how good the verifier is: with the oracle, a variant's
accuracy is the ceiling its proposals allow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nabla_jax.decoding.pair import check_pair
from nabla_jax.functional.step_reward import rm_frame
from nabla_jax.text.templates import rm_prefix_suffix_ids

__all__ = ["OracleScorer", "ReferenceNextToken"]


class OracleScorer:
    """``scorer(list of RM input id lists) -> scores``: the task's exact score of each response.

    Args:
      task: a :class:`~nabla_jax.tasks.registry.Task` with an ``oracle``.
      problems: every problem whose responses may be scored (their prompts must differ).
      lm, rm: the decoding models (the RM's template frames the inputs; the LM's tokenizer
        decodes the response ids).
      system: the system message the decoder uses (part of the template prefix).
      rm_vocab: how the RM reads LM ids (``nabla_jax.decoding.pair``); with ``by_string`` the
        response ids in an RM input are RM ids, decoded with the RM's tokenizer.

    Raises ``ValueError`` when the task has no oracle, and ``KeyError`` (from the call) for an
    input whose prefix belongs to none of the problems.
    """

    def __init__(self, task, problems: Sequence, lm, rm, *, system: str | None = None,
                 rm_vocab: str | None = None):  # fmt: skip
        if task.oracle is None:
            raise ValueError(f"task {task.name!r} has no oracle (an exact scorer of responses)")
        self.task = task
        if getattr(rm, "separator_id", None) is not None:
            raise ValueError(
                "the oracle reads each response back from the RM's input, where a separator "
                "PRM's step delimiters are replaced by its separator: use the PRM itself for "
                "acceptance (--acceptance rm), or a PRM read at the task's step ends"
            )
        rm_tok, vocabulary = check_pair(lm, rm, "the oracle scorer", rm_vocab)
        self.tokenizer = lm.tokenizer if vocabulary.mode == "shared" else rm_tok
        self._by_prefix: dict[tuple[int, ...], object] = {}
        self._suffixes: set[tuple[int, ...]] = set()
        for p in problems:
            prefix, suffix = rm_frame(
                rm, *rm_prefix_suffix_ids(rm_tok, task.format_prompt(p), system=system)
            )
            self._by_prefix[tuple(prefix)] = p
            self._suffixes.add(tuple(suffix))
        self._prefix_lengths = sorted({len(k) for k in self._by_prefix}, reverse=True)

    def split(self, ids: Sequence[int]) -> tuple[object, list[int]]:
        """``(problem, response ids)`` of one RM input id list."""
        ids = [int(i) for i in ids]
        for n in self._prefix_lengths:
            problem = self._by_prefix.get(tuple(ids[:n]))
            if problem is not None:
                rest = ids[n:]
                for suffix in sorted(self._suffixes, key=len, reverse=True):
                    if suffix and rest[-len(suffix) :] == list(suffix):
                        return problem, rest[: -len(suffix)]
                return problem, rest
        raise KeyError("an RM input whose template prefix belongs to none of the problems")

    def __call__(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        out = []
        for ids in seqs:
            problem, response = self.split(ids)
            text = self.tokenizer.decode(response, skip_special_tokens=True)
            out.append(float(self.task.oracle(problem, text)))
        return np.asarray(out, np.float64)


class ReferenceNextToken:
    """``oracle(prompt_ids, response_ids) -> right next token id, or -1``: a next-token oracle
    from the problems' reference solutions, for the decoder's gradient diagnostics
    (``NablaDecoder(..., next_token_oracle=...)``).

    While a response agrees with its problem's reference solution (its text is a prefix of the
    solution's), the right next token is the first token of the rest of the solution, encoded
    by the LM tokenizer; after the first disagreement there is none (-1). On the bundled task
    that is the exact digits of a line's result.

    Args:
      task: a :class:`~nabla_jax.tasks.registry.Task` (its ``format_prompt``).
      problems: the problems being decoded; each needs a ``solution``.
      tokenizer: the LM tokenizer (chat template included).
      system: the decoder's system message.
    """

    def __init__(self, task, problems: Sequence, tokenizer, *, system: str | None = None):
        from nabla_jax.text.templates import lm_prompt_ids

        self.tokenizer = tokenizer
        self._solution: dict[tuple[int, ...], str] = {}
        for p in problems:
            if getattr(p, "solution", None) is None:
                raise ValueError(f"problem {p.id!r} has no reference solution for the oracle")
            ids = lm_prompt_ids(tokenizer, task.format_prompt(p), system=system)
            self._solution[tuple(ids)] = p.solution

    def __call__(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> int:
        solution = self._solution.get(tuple(int(i) for i in prompt_ids))
        if solution is None:
            return -1
        done = self.tokenizer.decode(list(response_ids), skip_special_tokens=True)
        if not solution.startswith(done) or len(done) >= len(solution):
            return -1
        rest = self.tokenizer.encode(solution[len(done) :], add_special_tokens=False)
        return int(rest[0]) if rest else -1
