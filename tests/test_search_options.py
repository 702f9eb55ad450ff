"""The tree searches' settings beyond their counts (``decoding.search_options``): validation, the
run config's ``search:``, ``method_runner(search=...)``, and the CLI (``decode --method``,
``bench accuracy``, the ``--mcts-*`` / ``--uct-c`` / ``--beam-max-depth`` flags)."""

from __future__ import annotations

import jax
import pytest

from nabla_jax.app import cli
from nabla_jax.app.config_io import ConfigError, load_run_config
from nabla_jax.decoding import DecodeConfig, SamplingConfig, registry
from nabla_jax.decoding.search_options import BeamOptions, MCTSOptions, SearchOptions
from tests.cli_helpers import cli_fails as _fails
from tests.cli_helpers import model_args, results_rows, small_pair
from tests.tiny_decode import PROMPTS, load_chat_pair

# ----------------------------------------------------------------------- the options themselves


@pytest.mark.parametrize(
    "kw, phrase",
    [
        ({"simulations": 0}, "mcts.simulations must be an int >= 1"),
        ({"simulations": 2.5}, "mcts.simulations must be an int >= 1"),
        ({"simulations": True}, "mcts.simulations must be an int >= 1"),
        ({"uct_c": -0.1}, "mcts.uct_c must be a number >= 0"),
        ({"uct_c": float("nan")}, "mcts.uct_c must be a number >= 0"),
        ({"answer": "last"}, "mcts.answer must be one of best, visits"),
        ({"value": "prm"}, "mcts.value must be one of rollout, partial"),
    ],
)
def test_mcts_options_refuse_bad_values(kw, phrase):
    with pytest.raises(ValueError, match=phrase):
        MCTSOptions(**kw)


def test_beam_options_refuse_a_bad_depth():
    with pytest.raises(ValueError, match="beam.max_depth must be an int >= 1"):
        BeamOptions(max_depth=0)
    with pytest.raises(TypeError, match="search.mcts must be a MCTSOptions"):
        SearchOptions(mcts={"simulations": 3})


def test_keywords_go_to_their_search_only():
    opts = SearchOptions(MCTSOptions(simulations=7, uct_c=0.5, answer="visits"), BeamOptions(3))
    assert opts.keywords("mcts") == {"simulations": 7, "uct_c": 0.5, "answer": "visits",
                                     "value": "rollout"}  # fmt: skip
    assert opts.keywords("beam") == {"max_depth": 3}
    assert opts.keywords("bon") == {} and opts.keywords("wbon") == {}
    assert SearchOptions().keywords("beam") == {}  # beam_search's own default (no cut)
    assert SearchOptions().is_default() and not opts.is_default()
    # replace: None leaves a field as it is (a flag not given)
    again = opts.replace(mcts={"simulations": None, "uct_c": 2.0}, beam={"max_depth": None})
    assert again.mcts == MCTSOptions(simulations=7, uct_c=2.0, answer="visits")
    assert again.beam.max_depth == 3


# ----------------------------------------------------------------------------- run configs


def test_run_config_search_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("search:\n  mcts: {simulations: 4, uct_c: 0.3}\n  beam: {max_depth: 5}\n")
    opts = load_run_config(str(path))["search"]
    assert opts == SearchOptions(MCTSOptions(simulations=4, uct_c=0.3), BeamOptions(5))
    path.write_text("search:\n  mcts: {sims: 4}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sims'\] in .*search.mcts"):
        load_run_config(str(path))
    path.write_text("search:\n  mcts: {answer: last}\n")
    with pytest.raises(ConfigError, match="mcts.answer must be one of best, visits"):
        load_run_config(str(path))
    path.write_text("search:\n  tree: {}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['tree'\] in .*search"):
        load_run_config(str(path))


# --------------------------------------------------------------- method_runner and the searches


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_chat_pair(tmp_path_factory)


@pytest.mark.slow
def test_method_runner_hands_the_options_to_the_search(models):
    lm, rm = models
    cfg = DecodeConfig(max_length=10, batch_size=4)
    hot = SamplingConfig(temperature=1.5)
    key = jax.random.key(3)

    def stats(spec, search):
        run = registry.method_runner(spec, lm, rm, cfg, hot, search=search)
        return [r.stats for r in run(PROMPTS[:2], key)]

    # Every round backs a value up to the root, so its visits grow with the rounds (a round
    # that selects a finished leaf expands nothing: "simulations" counts expansions only).
    visits = [
        [s["root_visits"] for s in stats("mcts:2x2", search)]
        for search in (None, SearchOptions(MCTSOptions(simulations=3)),
                       SearchOptions(MCTSOptions(simulations=5)))
    ]  # fmt: skip
    for default, three, five in zip(*visits, strict=True):
        assert default < three < five
    picked = stats("mcts:2x2", SearchOptions(MCTSOptions(answer="visits")))
    assert all(s["answer"] == "visits" for s in picked)
    # beam: a depth limit of one step stops after one expansion round
    cut = stats("beam:2x2", SearchOptions(beam=BeamOptions(max_depth=1)))
    assert all(s["depth"] <= 1 for s in cut)
    with pytest.raises(TypeError, match="search must be a SearchOptions"):
        registry.method_runner("mcts:2x2", lm, rm, cfg, hot, search={"simulations": 3})


# ------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return small_pair(tmp_path_factory.mktemp("pair"))


@pytest.mark.slow
def test_decode_with_a_tree_search(pair, tmp_path, capsys):
    out = tmp_path / "mcts.jsonl"
    argv = ["decode", "--prompt", "2+3=?", "--method", "mcts:2x2", "--mcts-simulations", "3",
            "--mcts-answer", "visits", "--output", str(out), *model_args(pair)]  # fmt: skip
    assert cli.main(argv) == 0
    prov, rows = results_rows(out)
    assert prov["method"] == "mcts:2x2"
    assert prov["search"]["mcts"] == {"simulations": 3, "uct_c": 1.0, "answer": "visits",
                                      "value": "rollout"}  # fmt: skip
    assert prov["baseline_sampling"]["temperature"] == 0.8
    assert len(rows) == 1 and rows[0]["stats"]["answer"] == "visits"
    assert 1 <= rows[0]["stats"]["simulations"] <= 3  # expansions made in 3 rounds
    # The same command resumes (nothing to do); other settings are another run's file.
    assert cli.main(argv) == 0
    assert len(results_rows(out)[1]) == 1
    other = [a if a != "3" else "4" for a in argv]
    _fails(other, capsys, "search")


def test_decode_method_errors(pair, capsys):
    base = ["decode", "--prompt", "2+3=?", *model_args(pair)]
    _fails([*base, "--method", "mcts"], capsys, "mcts needs 2 counts >= 1")
    _fails([*base, "--method", "nope"], capsys, "unknown method 'nope'")
    _fails([*base, "--method", "bon:2", "--trace"], capsys, "--method bon:2 revises nothing")
    _fails([*base, "--method", "bon:2", "--mesh", "data=1"], capsys, "only the ∇ variants shard")
    _fails([*base, "--method", "mcts:2x2", "--uct-c", "-1"], capsys, "mcts.uct_c must be")
    _fails([*base, "--method", "beam:2x2", "--beam-max-depth", "0"], capsys, "beam.max_depth")


@pytest.mark.slow
def test_bench_records_search_options(pair, tmp_path, capsys):
    out = tmp_path / "acc.jsonl"
    argv = ["bench", "accuracy", "--methods", "mcts:2x2", "--num-problems", "2",
            "--batch-size", "2", "--uct-c", "0.5", "--output", str(out), "--no-progress",
            *model_args(pair)]  # fmt: skip
    assert cli.main(argv) == 0
    prov, rows = results_rows(out)
    assert prov["search"]["mcts"]["uct_c"] == 0.5 and len(rows) == 2
    _fails([a if a != "0.5" else "0.7" for a in argv], capsys, "search")
