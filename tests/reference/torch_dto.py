"""PyTorch reference twins of the two DTO loops (written from the descriptions in
docs/algorithm.md#the-articles-sketch and docs/algorithm.md#the-papers-dto).

One prompt at a time, plain torch + Hugging Face PyTorch models, float32. The JAX ``refine`` is held
to these.

* :func:`article_optimize` — the article's ``optimize_reasoning_sequence`` (parity target "seed").
* :func:`paper_dto` — the paper's differentiable textual optimisation of the ahead window
  (parity target "paper"), with gradient caching, the position-0 gradient mask, torch Adam/AdamW
  and a ``LambdaLR`` schedule.

The models are frozen for the duration of a call (``requires_grad`` is switched off on their
parameters and restored afterwards), so only the optimised tensor receives gradients; they are not
put into eval mode here — pass models in eval mode (``tests.hf_models.hf_model`` does).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from tests.reference.torch_ste import STEArgmax, st_softmax


@contextlib.contextmanager
def frozen(*models: torch.nn.Module):
    """Switch off ``requires_grad`` on every parameter of ``models``; restore it on exit."""
    saved = [(p, p.requires_grad) for m in models for p in m.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


# --------------------------------------------------------------------------------------------------
# §1: the article's sketch
# --------------------------------------------------------------------------------------------------


def article_reward_of(rm_logits: torch.Tensor) -> torch.Tensor:
    """The sketch's scalar reward from a reward network's output logits.

    3-D ``[1, T, C]`` (a causal LM used as the reward network, as in the sketch):
    ``logits[:, -1, :].mean()``. 2-D ``[1, C]`` (a sequence-classification head, already pooled at
    the last position): ``logits.mean()`` — the sketch's indexing would fail there; this is the
    library's "real" form. For a one-label head both read the score at the last position.
    """
    if rm_logits.ndim == 3:
        return rm_logits[:, -1, :].mean()
    if rm_logits.ndim == 2:
        return rm_logits.mean()
    raise ValueError(f"reward logits must be 2-D or 3-D, got shape {tuple(rm_logits.shape)}")


def article_kl(logits: torch.Tensor, ref_logits: torch.Tensor, direction: str = "ref_theta"):
    """The sketch's KL term, either direction, divided by ``T`` ("batchmean").

    ``direction="ref_theta"`` (the sketch's code): ``F.kl_div(log_softmax(Z), softmax(R),
    "batchmean")`` = KL(p_ref ‖ p_θ) / T. ``"theta_ref"`` (the article's prose):
    KL(p_θ ‖ p_ref) / T.
    """
    if direction == "ref_theta":
        return F.kl_div(
            F.log_softmax(logits, dim=-1),
            F.softmax(ref_logits.detach(), dim=-1),
            reduction="batchmean",
        )
    if direction == "theta_ref":
        return F.kl_div(
            F.log_softmax(ref_logits.detach(), dim=-1),
            F.softmax(logits, dim=-1),
            reduction="batchmean",
        )
    raise ValueError(f"unknown KL direction {direction!r}")


def article_optimize(
    init_logits: torch.Tensor,
    reward_model: torch.nn.Module,
    ref_logits: torch.Tensor,
    lambda_kl: float = 0.1,
    learning_rate: float = 0.05,
    num_steps: int = 5,
    *,
    kl_direction: str = "ref_theta",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    return_grads: bool = False,
):
    """The article's ``optimize_reasoning_sequence`` (its unused ``prompt_ids`` / ``lm_model``
    arguments dropped).

    ``init_logits [T, V]``, ``ref_logits [T, V]``; ``V`` must equal the reward network's input
    vocabulary. Each step: ``zero_grad``; ``onehot = STEArgmax(Z)`` (identity backward);
    ``emb = onehot @ reward_model.get_input_embeddings().weight``; ``reward =
    article_reward_of(reward_model(inputs_embeds=emb[None]).logits)`` (no attention mask, default
    positions); ``kl = article_kl(Z, R)``; ``loss = -reward + lambda_kl * kl``; ``backward``;
    ``torch.optim.Adam(lr, betas, eps)`` step (default betas (0.9, 0.999), eps 1e-8, no weight
    decay).

    Returns ``(logits [T, V], trace)`` where ``trace`` is a list of ``num_steps`` tuples
    ``(loss, reward, kl)`` of Python floats, each evaluated at the parameters *before* that step's
    update. With ``return_grads`` a third item is returned: the list of per-step gradients
    ``∂loss/∂Z`` (``[T, V]`` tensors).
    """
    logits = init_logits.detach().clone().requires_grad_(True)
    ref = ref_logits.detach()
    optimizer = torch.optim.Adam([logits], lr=learning_rate, betas=betas, eps=eps)
    trace: list[tuple[float, float, float]] = []
    grads: list[torch.Tensor] = []
    with frozen(reward_model):
        embed = reward_model.get_input_embeddings().weight
        for _ in range(num_steps):
            optimizer.zero_grad()
            onehot = STEArgmax.apply(logits)
            emb = onehot @ embed
            out = reward_model(inputs_embeds=emb.unsqueeze(0), use_cache=False)
            reward = article_reward_of(out.logits)
            kl = article_kl(logits, ref, kl_direction)
            loss = -reward + lambda_kl * kl
            loss.backward()
            trace.append((loss.item(), reward.item(), kl.item()))
            if return_grads:
                grads.append(logits.grad.detach().clone())
            optimizer.step()
    if return_grads:
        return logits.detach(), trace, grads
    return logits.detach(), trace


# --------------------------------------------------------------------------------------------------
# §2: the paper's DTO
# --------------------------------------------------------------------------------------------------


def lr_multiplier(
    step: int,
    *,
    num_steps: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
) -> float:
    """The ``LambdaLR`` multiplier at 0-based ``step`` (the lr used by optimiser step ``step``).

    warmup (``step < warmup_steps``): ``step / max(1, warmup_steps)`` (so step 0 has lr 0 when
    warmup > 0); then cosine ``max(min_lr_ratio, 0.5 (1 + cos(π p)))`` with ``p = (step - warmup) /
    max(1, num_steps - warmup)``, linear ``max(min_lr_ratio, (num_steps - step) / max(1, num_steps -
    warmup))``, or constant ``1``.
    """
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = float(step - warmup_steps) / float(max(1, num_steps - warmup_steps))
        return max(min_lr_ratio, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if schedule == "linear":
        return max(min_lr_ratio, float(num_steps - step) / float(max(1, num_steps - warmup_steps)))
    raise ValueError(f"unknown schedule {schedule!r}")


def _ids(ids, device) -> torch.Tensor:
    return torch.as_tensor(list(ids), dtype=torch.long, device=device)


def paper_forward(
    y: torch.Tensor,
    lm: torch.nn.Module,
    rm: torch.nn.Module,
    lm_prefix_ids,
    rm_prefix_ids,
    rm_suffix_ids,
    *,
    nll_coeff: float = 1e-3,
    reward_coeff: float = 1.0,
    rm_embed: torch.Tensor | None = None,
):
    """The full DTO objective at relaxed tokens ``y [K, V]``: returns ``(loss, loglik, reward)``.

    LM: ``inputs_embeds = cat(E_lm[lm_prefix_ids], y @ E_lm)[None]``, no attention mask, default
    positions ``0 … P+K-1``; ``pred = logits[0, P-1 : P+K-1]``; ``loglik = nll_coeff · Σ y ·
    log_softmax(pred)``. RM: ``inputs_embeds = cat(E_rm[rm_prefix_ids], y @ A, E_rm[rm_suffix_ids])
    [None]`` with ``A = rm_embed`` (a vocabulary-aligned ``[V, D_rm]`` table) or ``E_rm``;
    ``reward = rm(...).logits[0, 0]`` (sequence-classification score pooled at the last position:
    with ``inputs_embeds`` HF reads position -1). ``loss = -(loglik + reward_coeff · reward)``.
    """
    device = y.device
    e_lm = lm.get_input_embeddings().weight
    e_rm = rm.get_input_embeddings().weight
    align = e_rm if rm_embed is None else rm_embed
    p = len(lm_prefix_ids)
    k = y.shape[0]
    if p < 1:
        raise ValueError("the LM prefix must hold at least one token")

    lm_in = torch.cat([e_lm[_ids(lm_prefix_ids, device)], y @ e_lm], dim=0)
    lm_logits = lm(inputs_embeds=lm_in.unsqueeze(0), use_cache=False).logits
    pred = lm_logits[0, p - 1 : p + k - 1]
    loglik = nll_coeff * (y * F.log_softmax(pred, dim=-1)).sum()

    rm_in = torch.cat(
        [e_rm[_ids(rm_prefix_ids, device)], y @ align, e_rm[_ids(rm_suffix_ids, device)]], dim=0
    )
    reward = rm(inputs_embeds=rm_in.unsqueeze(0), use_cache=False).logits[0, 0]
    loss = -(loglik + reward_coeff * reward)
    return loss, loglik, reward


def paper_dto(
    lm: torch.nn.Module,
    rm: torch.nn.Module,
    lm_prefix_ids: list[int],
    rm_prefix_ids: list[int],
    rm_suffix_ids: list[int],
    init: torch.Tensor,
    *,
    mode: str = "logits",
    num_steps: int = 20,
    learning_rate: float = 0.01,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    schedule: str = "cosine",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    reward_coeff: float = 1.0,
    nll_coeff: float = 1e-3,
    tau: float = 1.0,
    hard: bool = True,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    update_postfix: bool = False,
    grad_caching: bool = True,
    rm_embed: torch.Tensor | None = None,
    return_grads: bool = False,
    param_dtype: torch.dtype = torch.float32,
    clip_grad_norm: float | None = None,
) -> dict:
    """The paper's DTO on one ahead window, no Gumbel noise.

    ``param_dtype``: dtype of the optimized parameter (and so of Adam's moments, which torch keeps
    in the parameter's dtype); the relaxation and the models read it upcast to float32. The
    public code's bfloat16 ahead logits are ``param_dtype=torch.bfloat16``.

    ``init``: logits ``Z [K, V]`` (``mode="logits"``) or last-layer latents ``H [K, D]``
    (``mode="latents"``, ``Z = H @ W_out.T`` with ``W_out = lm.get_output_embeddings().weight``;
    no bias). ``lm_prefix_ids`` = templated prompt ++ committed tokens; ``rm_prefix_ids`` = RM
    template prefix ++ committed tokens; ``rm_suffix_ids`` = RM template suffix.

    Step ``s`` (0-based), in this order:

    1. ``zero_grad``; ``Z`` from the parameter; ``y = y_hard - y_soft.detach() + y_soft`` with
       ``y_soft = softmax(Z / tau)`` (``hard=False``: ``y = y_soft``).
    2. Full step (no cached gradient): ``loss, loglik, reward = paper_forward(y, ...)``,
       ``y.retain_grad()``. Surrogate step (cache held): ``loss = (g * y).sum()`` with the cached,
       detached ``g`` — no model call; ``y`` (hence the soft Jacobian) is that of the current ``Z``.
    3. ``loss.backward()``; unless ``update_postfix`` the parameter's gradient is zeroed at every
       position but 0 (torch Adam's ``weight_decay`` still adds ``wd · param`` at all positions, and
       AdamW still decays all positions).
    3b. With ``clip_grad_norm``: ``torch.nn.utils.clip_grad_norm_`` of the (masked) gradient.
    4. ``optimizer.step()`` (``torch.optim.Adam(weight_decay=wd)``, L2 into the gradient, or
       ``torch.optim.AdamW(weight_decay=wd)``; ``betas``, ``eps``, default (0.9, 0.999), 1e-8);
       ``scheduler.step()`` (``LambdaLR`` with :func:`lr_multiplier`).
    5. If the step was full and ``grad_caching``: cache ``g = y.grad`` (``∂loss/∂y``, LM + RM
       paths).
    6. New tokens ``argmax Z`` (of the updated parameter); if any position differs from the
       previous tokens (initially ``argmax Z0``): drop the cache, adopt the new tokens.

    Without ``grad_caching`` every step is full. Step 0 is always full, so the number of full steps
    is ``1 + #{s < num_steps - 1 : tokens changed at step s}``.

    Returns a dict:
      ``logits [K, V]`` final ``Z`` (latents mode: ``H_final @ W_out.T``); ``param`` final parameter
      (``Z`` or ``H``); ``tokens [K]`` ``argmax`` of the final ``Z`` (long); per step (length
      ``num_steps``, Python scalars): ``losses`` (the value backpropagated: full loss or surrogate),
      ``rewards`` / ``logliks`` (of the most recent full step, repeated on surrogate steps),
      ``full_steps`` (bool), ``lrs`` (lr used by that step's optimiser update), ``n_changed``
      (positions whose argmax changed by that step's update); ``model_calls`` = 4 · full steps.
      With ``return_grads``: ``grads``, the per-step masked parameter gradients (before weight
      decay).
    """
    if mode not in ("logits", "latents"):
        raise ValueError(f"unknown mode {mode!r}")
    w_out = lm.get_output_embeddings().weight

    def to_logits(param: torch.Tensor) -> torch.Tensor:
        param = param.float()
        return param if mode == "logits" else param @ w_out.T

    param = init.detach().clone().to(param_dtype).requires_grad_(True)
    if optimizer == "adam":
        opt = torch.optim.Adam(
            [param], lr=learning_rate, betas=betas, eps=eps, weight_decay=weight_decay
        )
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(
            [param], lr=learning_rate, betas=betas, eps=eps, weight_decay=weight_decay
        )
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: lr_multiplier(
            s,
            num_steps=num_steps,
            schedule=schedule,
            warmup_steps=warmup_steps,
            min_lr_ratio=min_lr_ratio,
        ),
    )

    losses: list[float] = []
    rewards: list[float] = []
    logliks: list[float] = []
    full_steps: list[bool] = []
    lrs: list[float] = []
    n_changed: list[int] = []
    grads: list[torch.Tensor] = []
    cache: torch.Tensor | None = None
    last_reward = float("nan")
    last_loglik = float("nan")

    with frozen(lm, rm):
        with torch.no_grad():
            tokens = to_logits(param).argmax(dim=-1)
        for _ in range(num_steps):
            opt.zero_grad()
            z = to_logits(param)
            y = st_softmax(z, tau, hard=hard)
            full = cache is None
            if full:
                y.retain_grad()
                loss, loglik, reward = paper_forward(
                    y,
                    lm,
                    rm,
                    lm_prefix_ids,
                    rm_prefix_ids,
                    rm_suffix_ids,
                    nll_coeff=nll_coeff,
                    reward_coeff=reward_coeff,
                    rm_embed=rm_embed,
                )
                last_reward, last_loglik = reward.item(), loglik.item()
            else:
                loss = (cache * y).sum()
            loss.backward()
            if not update_postfix:
                with torch.no_grad():
                    param.grad[1:] = 0.0
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([param], clip_grad_norm)
            if return_grads:
                grads.append(param.grad.detach().clone())
            lrs.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            sched.step()
            if full and grad_caching:
                cache = y.grad.detach().clone()
            with torch.no_grad():
                new_tokens = to_logits(param).argmax(dim=-1)
            changed = int((new_tokens != tokens).sum().item())
            if changed:
                cache = None
                tokens = new_tokens
            losses.append(loss.item())
            rewards.append(last_reward)
            logliks.append(last_loglik)
            full_steps.append(full)
            n_changed.append(changed)

        with torch.no_grad():
            final_logits = to_logits(param).detach().clone()

    out = dict(
        logits=final_logits,
        param=param.detach().clone(),
        tokens=final_logits.argmax(dim=-1),
        losses=losses,
        rewards=rewards,
        logliks=logliks,
        full_steps=full_steps,
        lrs=lrs,
        n_changed=n_changed,
        model_calls=4 * sum(full_steps),
    )
    if return_grads:
        out["grads"] = grads
    return out
