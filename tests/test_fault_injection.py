"""The fast subset of the fault-injection suite (tests/fault_injection.py, the long version with random
plans: `python tests/fault_injection.py`). Each case trains in a subprocess that is SIGKILLed at
fixed points (inside `save_state`, between the temporary folder and its rename, half-way through a
prune) and once at a random moment, resumed with `--resume_from_checkpoint latest` each time, and
must end bit-identical to an uninterrupted run."""

import random

import pytest

from fault_injection import make_data, run_case

PLANS = {
    "defaults": ["save_state@2", "rename@1", "random"],
    "random_crops_2_workers": ["save_state@1", "rename@2"],
    "dropout": ["rename@1", "save_state@4"],
    "grad_accumulation_2": ["save_state@2", "rename@2"],
    "streaming": ["rename@1", "save_state@3"],
    "checkpoint_limit_1": ["prune@1", "save_state@2", "rename@3"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("fault_data"))


@pytest.mark.parametrize("case", list(PLANS))
def test_killed_and_resumed_training_ends_bit_identical(case, data, tmp_path):
    random.seed(0)
    result = run_case(case, PLANS[case], tmp_path, data)
    print(f"{case}: survived {result['kills']} kills in {result['launches']} launches")
    planned = sum(kill != "random" for kill in PLANS[case])
    assert result["kills"] >= planned, result  # every planned kill point was reached
    assert result["identical"], result
