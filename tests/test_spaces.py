"""CompletionSpace: every real completion is a member; sampling is seeded; Gymnasium's checks accept it."""

import copy
import pickle
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from ossgym.envs.code.spaces import CompletionSpace
from ossgym.errors import ConfigError

COMPLETIONS = [
    "",
    " ",
    "\n\n",
    "<|channel|>final<|message|>```python\ndef strategy(board):\n\treturn 'W'\n```<|return|>",
    "Überlegung: λ → 中文 🙂",
    "\x00\x1f\u200b",
]


@pytest.mark.parametrize("text", COMPLETIONS)
def test_accepts_any_unicode_str(text):
    assert text in CompletionSpace()
    assert text not in gymnasium.spaces.Text(64) or text == ""  # why the custom space exists


def test_rejects_non_strings_and_too_long():
    space = CompletionSpace(max_length=3)
    for x in (None, 3, b"abc", ["a"], np.array(["a"])):
        assert x not in space
    assert "abc" in space and "abcd" not in space


def test_sample_is_seeded_member_and_varied():
    a, b = CompletionSpace(seed=7), CompletionSpace(seed=7)
    sa = [a.sample() for _ in range(20)]
    assert sa == [b.sample() for _ in range(20)]
    assert all(type(s) is str and s in a for s in sa)
    assert len(set(sa)) > 10
    joined = "".join(CompletionSpace(seed=1, sample_max_length=500).sample() for _ in range(5))
    assert {" ", "\n"} <= set(joined) and any(ord(c) > 127 for c in joined)


def test_reseed_restarts_stream():
    space = CompletionSpace()
    space.seed(3)
    first = space.sample()
    space.seed(3)
    assert space.sample() == first


def test_sample_respects_max_length_and_masks():
    space = CompletionSpace(max_length=5, sample_max_length=100, seed=0)
    assert all(len(space.sample()) <= 5 for _ in range(50))
    n = len(space.sample_chars)
    only_a = np.zeros(n, dtype=np.int8)
    only_a[space.sample_chars.index("a")] = 1
    assert space.sample(mask=(4, only_a)) == "aaaa"
    assert space.sample(mask=(3, np.zeros(n, dtype=np.int8))) == ""
    assert len(space.sample(mask=(2, None))) == 2
    assert space.sample(probability=(3, only_a.astype(np.float64))) == "aaa"
    with pytest.raises(ValueError):
        space.sample(mask=(6, None))
    with pytest.raises(ValueError):
        space.sample(mask=(1, None), probability=(1, None))


def test_jsonable_roundtrip_eq_copy_pickle():
    space = CompletionSpace(max_length=100, seed=2)
    samples = COMPLETIONS[:5]
    assert space.from_jsonable(space.to_jsonable(samples)) == samples
    assert space == CompletionSpace(max_length=100) and space != CompletionSpace()
    assert space != gymnasium.spaces.Text(100)
    clone = pickle.loads(pickle.dumps(space))
    assert clone == space and copy.deepcopy(space) == space
    assert hash(clone) == hash(space)
    assert not space.is_np_flattenable


def test_bad_config_raises_config_error():
    with pytest.raises(ConfigError, match="max_length"):
        CompletionSpace(max_length=-1)
    with pytest.raises(ConfigError, match="sample_charset"):
        CompletionSpace(sample_charset="")


class _EchoEnv(gymnasium.Env):
    """Minimal text-in/text-out env used only to run Gymnasium's check_env on the space."""

    def __init__(self):
        self.observation_space = CompletionSpace()
        self.action_space = CompletionSpace(max_length=256)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "task " + str(int(self.np_random.integers(100))), {}

    def step(self, action):
        assert action in self.action_space
        return "feedback: " + action[:10], float(len(action)), True, False, {}


def test_check_env_accepts_space():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from the checker either
        check_env(_EchoEnv(), skip_render_check=True)
