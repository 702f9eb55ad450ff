"""Process reward models: a score per reasoning step, read at the step ends.

Three head layouts sit on a decoder backbone (:class:`~nabla_jax.models.model.Backbone`):

* ``token_classification`` — ``*ForTokenClassification`` with 2 labels (trl's ``PRMTrainer``
  output): ``score`` Linear(H, 2) (with a bias unless ``token_classification_bias`` is false);
  a step's score is ``softmax(logits)[..., 1]`` at its separator token.
* ``math_prm`` — the Qwen2.5-Math-PRM layout (``Qwen2ForProcessRewardModel``): ``score.0``
  Linear(H, H), ReLU, ``score.2`` Linear(H, 2); read the same way at its ``<extra_0>`` tokens.
* ``sequence`` — an outcome RM (``*ForSequenceClassification``, 1 label) read at every step end:
  under causal attention the hidden state at position ``t`` is the one the RM pools for the
  prefix ending at ``t``, so one pass scores every prefix; a step's score is the raw logit.

Each head converts from its Hugging Face keys through a strict :class:`~nabla_jax.models.keys.
KeyTable`, like the families' tables. Step positions come from the caller (the task's step
ends, or :func:`separator_mask` of the PRM's separator); :func:`step_end_positions` turns a
``[B, T]`` end mask into fixed-shape ``[B, S]`` positions. Aggregating the ``[B, S]`` scores
is :mod:`nabla_jax.functional.step_scores`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from nabla_jax.models.convert import (
    CheckpointMismatchError,
    convert_tensors,
    read_checkpoint,
    unflatten_tree,
)
from nabla_jax.models.keys import KeyRow, KeyTable, apply_transpose
from nabla_jax.models.layers import NO_HEAD
from nabla_jax.models.load import (
    check_finite,
    check_model_dir,
    load_tokenizer,
    read_model_config,
)
from nabla_jax.models.model import Backbone, param_shapes, resolve_dtype
from nabla_jax.models.registry import family_of

__all__ = [
    "MATH_PRM_SEPARATOR",
    "PRM_LAYOUTS",
    "HeadLayout",
    "ProcessRewardModel",
    "head_layout",
    "layout_of_architecture",
    "load_process_reward_model",
    "separator_mask",
    "step_end_positions",
]

#: The step separator Qwen2.5-Math-PRM is read at.
MATH_PRM_SEPARATOR = "<extra_0>"


@dataclasses.dataclass(frozen=True)
class HeadLayout:
    """A PRM head: its checkpoint keys and parameter shapes.

    Attributes:
      name: the layout name (one of :data:`PRM_LAYOUTS`).
      keys: checkpoint ``score.*`` names ↔ head parameter paths.
      shapes: ``{path: shape}`` of every head parameter for hidden size ``H``.
      labels: classes the head outputs (2: read class 1's probability; 1: the raw logit).
    """

    name: str
    keys: KeyTable
    shapes: dict
    labels: int


PRM_LAYOUTS: tuple[str, ...] = ("token_classification", "math_prm", "sequence")


def head_layout(name: str, hidden: int, *, bias: bool = True) -> HeadLayout:
    """The :class:`HeadLayout` called ``name`` for hidden size ``hidden`` (``bias``: the
    token-classification head's bias, HF's ``token_classification_bias``)."""
    if name == "token_classification":
        rows = (KeyRow("score.weight", "kernel", transpose=True),)
        shapes = {"kernel": (hidden, 2)}
        if bias:
            rows += (KeyRow("score.bias", "bias"),)
            shapes["bias"] = (2,)
        return HeadLayout(name, KeyTable(rows), shapes, 2)
    if name == "math_prm":
        rows = (
            KeyRow("score.0.weight", "dense/kernel", transpose=True),
            KeyRow("score.0.bias", "dense/bias"),
            KeyRow("score.2.weight", "out/kernel", transpose=True),
            KeyRow("score.2.bias", "out/bias"),
        )
        shapes = {
            "dense/kernel": (hidden, hidden),
            "dense/bias": (hidden,),
            "out/kernel": (hidden, 2),
            "out/bias": (2,),
        }
        return HeadLayout(name, KeyTable(rows), shapes, 2)
    if name == "sequence":
        rows = (KeyRow("score.weight", "kernel", transpose=True),)
        return HeadLayout(name, KeyTable(rows), {"kernel": (hidden, 1)}, 1)
    raise ValueError(f"PRM layout must be one of {', '.join(PRM_LAYOUTS)}, got {name!r}")


def layout_of_architecture(architectures) -> str:
    """The layout of an HF ``architectures`` list: ``*ForTokenClassification`` →
    ``token_classification``, ``Qwen2ForProcessRewardModel`` → ``math_prm``,
    ``*ForSequenceClassification`` → ``sequence``."""
    for arch in architectures or ():
        if arch.endswith("ForTokenClassification"):
            return "token_classification"
        if arch.endswith("ForProcessRewardModel"):
            return "math_prm"
        if arch.endswith("ForSequenceClassification"):
            return "sequence"
    raise ValueError(
        f"architectures {list(architectures or [])} name no process-reward head: expected "
        "*ForTokenClassification, Qwen2ForProcessRewardModel or *ForSequenceClassification "
        "(or pass layout=)"
    )


def _head_logits(layout: str, head: dict, hidden):
    """``hidden [..., H]`` → float32 ``[..., C]`` logits of the head."""
    f32 = jnp.float32
    if layout == "math_prm":
        h = jnp.einsum("...d,de->...e", hidden, head["dense"]["kernel"], preferred_element_type=f32)
        h = jax.nn.relu(h + head["dense"]["bias"].astype(f32)).astype(hidden.dtype)
        out = jnp.einsum("...d,dc->...c", h, head["out"]["kernel"], preferred_element_type=f32)
        return out + head["out"]["bias"].astype(f32)
    out = jnp.einsum("...d,dc->...c", hidden, head["kernel"], preferred_element_type=f32)
    return out + head["bias"].astype(f32) if "bias" in head else out


@jax.tree_util.register_pytree_node_class
class ProcessRewardModel:
    """A backbone, a PRM head and the layout that reads it; a pytree (leaves: the weights).

    Attributes:
      backbone: the :class:`~nabla_jax.models.model.Backbone` (config, tokenizer, params).
      head: the head's parameter tree (see :func:`head_layout`).
      layout: one of :data:`PRM_LAYOUTS`.
      separator_id: the token id the PRM reads steps at (``<extra_0>`` for ``math_prm``), or
        None when the steps come from the task.
    """

    def __init__(self, backbone: Backbone, head: dict, layout: str, separator_id=None):
        if layout not in PRM_LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(PRM_LAYOUTS)}, got {layout!r}")
        self.backbone, self.head, self.layout, self.separator_id = (
            backbone,
            head,
            layout,
            separator_id,
        )

    def tree_flatten(self):
        return (self.backbone, self.head), (self.layout, self.separator_id)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], children[1], *aux)

    @property
    def config(self):
        return self.backbone.config

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def embed_matrix(self):
        """``[V, H]`` input embeddings (for the straight-through path)."""
        return self.backbone.embed_matrix()

    def token_logits(
        self, input_ids=None, attention_mask=None, *, inputs_embeds=None, position_ids=None
    ):
        """Head logits at every position: float32 ``[B, T, C]`` (C = 2, or 1 for ``sequence``)."""
        hidden = self.backbone.hidden_states(
            input_ids, attention_mask, inputs_embeds=inputs_embeds, position_ids=position_ids
        )
        return _head_logits(self.layout, self.head, hidden)

    def token_scores(
        self, input_ids=None, attention_mask=None, *, inputs_embeds=None, position_ids=None
    ):
        """A step score as if a step ended at every position: float32 ``[B, T]`` — the
        probability of class 1 (2-label heads), or the outcome RM's logit (``sequence``)."""
        hidden = self.backbone.hidden_states(
            input_ids, attention_mask, inputs_embeds=inputs_embeds, position_ids=position_ids
        )
        return self.scores_of_hidden(hidden)

    def scores_of_hidden(self, hidden):
        """``token_scores`` of the backbone's hidden states ``[..., H]``: float32 ``[...]``."""
        logits = _head_logits(self.layout, self.head, hidden)
        return logits[..., 0] if logits.shape[-1] == 1 else jax.nn.softmax(logits, -1)[..., 1]

    def step_scores(
        self,
        positions,
        step_mask,
        input_ids=None,
        attention_mask=None,
        *,
        inputs_embeds=None,
        position_ids=None,
    ):
        """Scores at the step ends: float32 ``[B, S]``, 0 where ``step_mask`` is 0.

        Args:
          positions: ``[B, S]`` int positions of the step ends (from :func:`step_end_positions`).
          step_mask: ``[B, S]`` 1 for real steps.
          input_ids / inputs_embeds, attention_mask, position_ids: as ``token_scores``.
        """
        scores = self.token_scores(
            input_ids, attention_mask, inputs_embeds=inputs_embeds, position_ids=position_ids
        )
        positions, step_mask = jnp.asarray(positions), jnp.asarray(step_mask)
        if positions.shape != step_mask.shape or positions.shape[0] != scores.shape[0]:
            raise ValueError(
                f"positions {positions.shape} and step_mask {step_mask.shape} must both be "
                f"[B, S] with B = {scores.shape[0]}"
            )
        t = scores.shape[1]
        if not isinstance(positions, jax.core.Tracer) and not isinstance(
            step_mask, jax.core.Tracer
        ):
            real = np.asarray(positions)[np.asarray(step_mask) > 0]
            if real.size and (real.min() < 0 or real.max() >= t):
                raise ValueError(
                    f"step positions hold {int(real.min())}..{int(real.max())}, outside the "
                    f"{t} positions of the input; take them from step_end_positions of its ids"
                )
        picked = jnp.take_along_axis(scores, jnp.clip(positions, 0, t - 1), axis=1)
        return jnp.where(step_mask > 0, picked, 0.0)


def separator_mask(input_ids, separator_ids) -> jax.Array:
    """``[B, T]`` bool: positions holding one of ``separator_ids`` (an int or a sequence)."""
    seps = jnp.atleast_1d(jnp.asarray(separator_ids, jnp.int32))
    return jnp.isin(jnp.asarray(input_ids), seps)


def step_end_positions(is_end, max_steps: int):
    """Fixed-shape step ends from a ``[B, T]`` end mask.

    Args:
      is_end: ``[B, T]`` bool, True at each step's last token.
      max_steps: ``S``, the number of step slots (a static int).

    Returns:
      ``(positions [B, S] int32, step_mask [B, S] int32, counts [B] int32)``: the first ``S``
      ends of each row in order (position 0 and mask 0 in unused slots), and how many ends each
      row has. With concrete input, more than ``S`` ends in a row raises ``ValueError`` (steps
      are never dropped silently); under ``jit`` compare ``counts`` with ``S`` yourself.
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    is_end = jnp.asarray(is_end).astype(bool)
    if is_end.ndim != 2:
        raise ValueError(f"is_end must be [B, T], got shape {is_end.shape}")
    counts = jnp.sum(is_end, axis=1, dtype=jnp.int32)
    if not isinstance(counts, jax.core.Tracer) and counts.size and int(counts.max()) > max_steps:
        raise ValueError(
            f"a row has {int(counts.max())} step ends but max_steps is {max_steps}; raise "
            "max_steps (no step is dropped)"
        )
    rank = jnp.cumsum(is_end, axis=1) - 1  # [B, T]: which step each end closes
    slot = (rank[..., None] == jnp.arange(max_steps)) & is_end[..., None]  # [B, T, S]
    positions = jnp.argmax(slot, axis=1).astype(jnp.int32)
    return positions, jnp.any(slot, axis=1).astype(jnp.int32), counts


def _convert_head(layout: HeadLayout, tensors: dict, dtype: str, path) -> dict:
    """The head tree from the checkpoint's ``score.*`` tensors, strictly."""
    target = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    flat, unused = {}, []
    for name, x in tensors.items():
        routed = layout.keys.route(name)
        if routed is None:
            unused.append(name)
            continue
        row = routed[0]
        x = apply_transpose(np.asarray(x), row.transpose)
        want = layout.shapes[row.path]
        if tuple(x.shape) != tuple(want):
            raise CheckpointMismatchError(
                f"{path}: {name} has shape {tuple(x.shape)}, the {layout.name} head needs "
                f"{tuple(want)} ({row.path})"
            )
        flat[row.path] = jnp.asarray(x.astype(target))
    missing = sorted(set(layout.shapes) - set(flat))
    if unused or missing:
        raise CheckpointMismatchError(
            f"{path}: the checkpoint's score head does not match the {layout.name} layout: "
            f"unknown head keys {sorted(unused) or 'none'}, head parameters with no key "
            f"{[layout.keys.row_for(m).hf for m in missing] or 'none'}"
        )
    return unflatten_tree(flat)


def load_process_reward_model(
    path, dtype="float32", *, layout=None, allow_pickle=False, tokenizer=True, separator=None
) -> ProcessRewardModel:
    """Load a process reward model from a local HF directory (strict key tables both parts).

    Args:
      path: directory with ``config.json`` and the weights.
      dtype: "float32" or "bfloat16".
      layout: one of :data:`PRM_LAYOUTS`; default from ``config.json``'s ``architectures``.
      allow_pickle, tokenizer: as :func:`~nabla_jax.models.load.load_causal_lm`.
      separator: the step-separator token string; default ``<extra_0>`` for ``math_prm`` (it
        must be in the tokenizer), none otherwise (the steps come from the task).
    """
    path = check_model_dir(path)
    cfg = read_model_config(path)
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    layout = layout or layout_of_architecture(hf.get("architectures"))
    bias = bool(hf.get("token_classification_bias", True))
    spec = head_layout(layout, cfg.hidden_size, bias=bias)
    if layout != "math_prm" and cfg.num_labels != spec.labels:
        raise ValueError(
            f"{path}: a {layout} PRM has {spec.labels} label(s) "
            f"({'class 1 = a correct step' if spec.labels == 2 else 'the outcome score'}), "
            f"config.json has num_labels {cfg.num_labels}"
        )
    dtype = resolve_dtype(dtype)
    tensors = read_checkpoint(path, allow_pickle)
    head_t = {k: v for k, v in tensors.items() if k.startswith("score.")}
    body_t = {k: v for k, v in tensors.items() if not k.startswith("score.")}
    body = jax.tree.map(
        jnp.asarray, convert_tensors(cfg, body_t, param_shapes(cfg, dtype, NO_HEAD), dtype)
    )
    check_finite(body, path, family_of(cfg).layer_stack)
    head = _convert_head(spec, head_t, dtype, path)
    check_finite(head, path)
    tok = load_tokenizer(path) if tokenizer is True else tokenizer or None
    sep = separator if separator is not None else (
        MATH_PRM_SEPARATOR if layout == "math_prm" else None
    )  # fmt: skip
    sep_id = None
    if sep is not None:
        vocab = tok.get_vocab() if tok is not None else {}
        if sep not in vocab:
            raise ValueError(
                f"{path}: the step separator {sep!r} is not a token of the PRM's tokenizer "
                "(save the tokenizer beside the checkpoint, or pass separator=)"
            )
        sep_id = int(vocab[sep])
    return ProcessRewardModel(Backbone(cfg, body, tok, dtype), head, layout, sep_id)
