"""What the ``decode`` and ``bench accuracy`` commands share: the run config, the task, the
models, the multi-host setup, and how models are recorded in a results file's provenance."""

from __future__ import annotations

from nabla_jax.app.cli_checks import check_model_dir, fail, precheck_pair

__all__ = [
    "decode_config",
    "load_models",
    "model_id",
    "model_settings",
    "rm_steps_of",
    "rm_vocab_of",
    "search_options_of",
    "setup_distributed",
    "task_of",
]


def model_settings(args, run: dict) -> tuple[str | None, str | None, str]:
    """(--lm path or None for bundled, --rm path or None, dtype) from the flags or the config."""
    models_cfg = run.get("models") or {}
    lm = args.lm or models_cfg.get("lm")
    rm = args.rm or models_cfg.get("rm")
    return lm, rm, args.dtype or models_cfg.get("dtype") or "float32"


def rm_vocab_of(args, run: dict) -> str | None:
    """``--rm-vocab``, else the config's ``models.rm_vocab``, else None (the default)."""
    return getattr(args, "rm_vocab", None) or (run.get("models") or {}).get("rm_vocab")


def search_options_of(args, run: dict):
    """The tree searches' settings: the run config's ``search:`` with the ``--mcts-*`` /
    ``--uct-c`` / ``--beam-max-depth`` flags given replacing its fields."""
    from nabla_jax.decoding.search_options import SearchOptions

    base = run.get("search") or SearchOptions()
    mcts = {
        "simulations": getattr(args, "mcts_simulations", None),
        "uct_c": getattr(args, "uct_c", None),
        "answer": getattr(args, "mcts_answer", None),
        "value": getattr(args, "mcts_value", None),
    }
    beam = {"max_depth": getattr(args, "beam_max_depth", None)}
    try:
        return base.replace(mcts=mcts, beam=beam)
    except (TypeError, ValueError) as e:
        raise fail(
            f"tree-search settings (--mcts-simulations, --uct-c, --mcts-answer, --mcts-value, "
            f"--beam-max-depth, or the config's search:): {e}"
        ) from e


def model_id(path: str | None) -> str:
    """A model as recorded in a results file's provenance: its absolute path, or "bundled"."""
    import os

    return os.path.abspath(path) if path else "bundled"


def rm_steps_of(run: dict) -> dict | None:
    """The run config's ``models.rm_steps`` (read the RM per step), or None."""
    return (run.get("models") or {}).get("rm_steps")


def load_models(args, run: dict, *, step_delimiter: str = "\n"):
    """(LM, RM) of the flags / run config (default: the bundled pair), checked first. With
    ``models.rm_steps`` the RM is a process reward model read at the task's step ends
    (``step_delimiter``) or its separator: a :class:`~nabla_jax.functional.step_reward.
    StepReward`."""
    from nabla_jax.app.bundled import BUNDLED_LM, BUNDLED_RM
    from nabla_jax.models import load_causal_lm, load_reward_model

    lm_path, rm_path, dtype = model_settings(args, run)
    lm_path, rm_path = lm_path or str(BUNDLED_LM), rm_path or str(BUNDLED_RM)
    check_model_dir(lm_path, "--lm")
    check_model_dir(rm_path, "--rm")
    note = precheck_pair(lm_path, rm_path, rm_vocab_of(args, run))
    if note:
        import sys

        print(note, file=sys.stderr)
    mesh = getattr(args, "mesh_obj", None)
    kw = {"mesh": mesh} if mesh is not None else {}
    kw["allow_pickle"] = bool(getattr(args, "allow_pickle", False))
    steps = rm_steps_of(run)
    if steps is None:
        return load_causal_lm(lm_path, dtype, **kw), load_reward_model(rm_path, dtype, **kw)
    from nabla_jax.functional.step_reward import step_reward
    from nabla_jax.models import load_process_reward_model

    if mesh is not None:
        raise fail(
            "models.rm_steps (a process reward model read per step) runs on one device for "
            "now: drop --mesh"
        )
    try:
        prm = load_process_reward_model(rm_path, dtype, layout=steps.get("layout"),
                                        allow_pickle=kw["allow_pickle"],
                                        separator=steps.get("separator"))  # fmt: skip
        reward = step_reward(prm, steps["aggregate"], step_end=step_delimiter,
                             temperature=steps.get("temperature"))  # fmt: skip
    except ValueError as e:
        raise fail(f"models.rm_steps: {e}") from None
    return load_causal_lm(lm_path, dtype, **kw), reward


def decode_config(args):
    """(DecodeConfig, run-config dict) from --config (YAML) or the bundled defaults."""
    from nabla_jax.app.bundled import bundled_decode_config
    from nabla_jax.app.config_io import ConfigError, load_run_config

    if getattr(args, "config", None):
        try:
            run = load_run_config(args.config)
        except (ConfigError, FileNotFoundError) as e:
            raise fail(str(e)) from e
        if run.get("compilation_cache") is False:
            from nabla_jax.runtime import compilation_cache

            compilation_cache.disable()
        return run["decode"], run
    return bundled_decode_config(), {}


def setup_distributed(args, run: dict) -> None:
    """jax.distributed + mesh from the command line (or the run config / environment). The
    coordinator wait is ``--coordinator-timeout``, else the config's ``coordinator_timeout``,
    else ``NABLA_COORDINATOR_TIMEOUT`` or 120 s."""
    from nabla_jax.runtime import distributed

    timeout = getattr(args, "coordinator_timeout", None)
    if timeout is None:
        timeout = run.get("coordinator_timeout")
    distributed.maybe_initialize(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
        connect_timeout=timeout,
    )
    spec = args.mesh or run.get("mesh")
    if spec:
        from nabla_jax.runtime.sharding import make_mesh

        try:
            args.mesh_obj = make_mesh(spec)
        except ValueError as e:
            raise fail(str(e)) from e
    else:
        args.mesh_obj = None


def task_of(args, run: dict):
    """The task of ``--task`` / the run config's ``task:`` (default: arithmetic)."""
    from nabla_jax.tasks import task_from_config

    try:
        return task_from_config(run, getattr(args, "task", None))
    except ValueError as e:
        raise fail(str(e)) from e
