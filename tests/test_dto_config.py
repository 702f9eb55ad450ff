"""DTOConfig refuses bad values with one clear ValueError naming the field and what it needs."""

from __future__ import annotations

import numpy as np
import pytest

import nabla_jax as nj


@pytest.mark.parametrize(
    "kw, phrase",
    [
        ({"num_steps": True}, "num_steps=True: must be an int ≥ 1"),
        ({"num_steps": 2.0}, "num_steps=2.0: must be an int ≥ 1"),
        ({"hard": "no"}, "hard='no': must be True or False"),
        ({"grad_caching": 1}, "grad_caching=1: must be True or False"),
        ({"ste_warn_steps": -3}, "ste_warn_steps=-3: must be an int ≥ 0"),
        ({"b1": "x"}, "b1='x': must be a number in [0, 1)"),
        ({"b2": 1.0}, "b2=1.0: must be a number in [0, 1)"),
        ({"lambda_kl": -5}, "lambda_kl=-5: must be a finite number ≥ 0"),
        ({"eps": 0}, "eps=0: must be a finite number > 0"),
        ({"tau": float("nan")}, "tau=nan: must be a finite number > 0"),
        ({"learning_rate": "1e-2"}, "learning_rate='1e-2': must be a finite number > 0"),
        ({"warmup_ratio": 1.0}, "warmup_ratio=1.0: must be a number in [0, 1)"),
        ({"warmup_steps": 20}, "warmup_steps=20: must be an int in [0, num_steps=20)"),
        ({"kl_direction": "both"}, "kl_direction='both' is not one of"),
    ],
)
def test_bad_values_are_refused(kw, phrase):
    with pytest.raises(ValueError) as err:
        nj.DTOConfig(**kw)
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_numpy_scalars_are_numbers():
    cfg = nj.DTOConfig(num_steps=np.int64(3), learning_rate=np.float32(0.05), b1=np.float64(0.8))
    assert cfg.num_steps == 3 and cfg.b1 == 0.8
