"""The bugs of tests/plant_bugs.py still apply to the current source (each edit matches exactly
once, and the tests meant to catch it exist), so the replay commands of the closing notes keep
working. Planting and running them is `python tests/plant_bugs.py --all` (minutes; not in CI)."""

import os

import pytest

from helpers import REPO
from plant_bugs import BUGS, planted_text


@pytest.mark.parametrize("name", BUGS)
def test_the_planted_bug_applies_and_its_tests_exist(name):
    bug = BUGS[name]
    planted = planted_text(bug)
    assert bug.old not in planted and bug.new in planted
    compile(planted, bug.path, "exec")  # still Python
    for test in bug.tests:
        assert os.path.isfile(os.path.join(REPO, test)), test
