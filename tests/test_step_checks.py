"""The arithmetic task's exact per-line check (the labels the bundled PRM is judged by)."""

from __future__ import annotations

from nabla_jax.tasks.arithmetic_oracle import step_checks


def test_step_checks_follow_the_first_mistake():
    q = "Compute (12+7)*3-5"
    right = "12+7=19\n19*3=57\n57-5=52\nAnswer: 52"
    assert step_checks(q, right) == [True, True, True, True]
    wrong = "12+7=19\n19*3=58\n58-5=53\nAnswer: 53"
    assert step_checks(q, wrong) == [True, False, False, False]  # wrong from the slip on
    lucky = "12+7=18\n19*3=57\n57-5=52\nAnswer: 52"
    assert step_checks(q, lucky) == [False, False, False, False]  # a later right line is not
    assert step_checks(q, "12+7=19") == [True]
