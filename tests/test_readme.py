"""Every README example marked `readme-test` runs as written, and the Python API snippet runs
pasted into a file (with its `__main__` guard, and without it).

The README marks the examples that need no GPU and no cluster with a fence tag:
```` ```bash readme-test ```` (each command, `\\` continuations joined, runs in bash from the
repository root with the virtual environment's `bin/` first on PATH) and
```` ```python readme-test ```` (saved to a file, run from the repository root). Their sizes
are CI-sized; the long reproductions are behind `benchmarks/reproduce_readme.sh`. The cost
cache (`XDG_CACHE_HOME`) points into a temporary folder, so nothing outside /tmp is written.
~3 minutes on the 2-core CPU machine (each command 3-30 s).
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO

README = os.path.join(REPO, "README.md")
FENCE = re.compile(r"^( *)```(\w+) readme-test\n(.*?)^\1```", re.M | re.S)
QUESTION_ANSWER = "42"  # the needle of examples/data/haystack.txt (examples/data/question.json)


def readme_blocks(language):
    """Bodies (dedented) of the README's fenced blocks tagged `<language> readme-test`."""
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    return [textwrap.dedent(match.group(3)) for match in FENCE.finditer(text) if match.group(2) == language]


def readme_commands():
    """Every shell command of the bash blocks, continuation lines joined, in README order."""
    commands = []
    for block in readme_blocks("bash"):
        joined = block.replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def _env(tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    return dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
                XDG_CACHE_HOME=str(tmp_path / "cache"))


def _run(args, tmp_path, **kwargs):
    return subprocess.run(args, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600, **kwargs)


def test_readme_marks_examples():
    commands = readme_commands()
    assert len(commands) >= 10 and len(readme_blocks("python")) == 1
    assert any(command.startswith("longctx generate --model examples/models/needle-llama") for command in commands)


@pytest.mark.parametrize("command", readme_commands(), ids=lambda command: " ".join(command.split()[:3]))
def test_readme_command_runs_as_written(command, tmp_path):
    proc = _run(["bash", "-c", command], tmp_path)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if "examples/data/haystack.txt" in command:  # the shipped model answers the shipped needle
        assert f"answer: {QUESTION_ANSWER}" in proc.stdout, proc.stdout
    if command.startswith("longctx compare"):
        assert " DIFF " not in proc.stdout, proc.stdout  # exact methods: the same tokens as dense


def _snippet_without_guard(snippet):
    """The snippet with its `if __name__ == "__main__":` block moved to module level."""
    head, guard, body = snippet.partition('if __name__ == "__main__":\n')
    assert guard, "the README's API snippet shows the __main__ guard"
    return head + textwrap.dedent(body)


@pytest.mark.parametrize("guarded", [True, False], ids=["as-pasted", "without-main-guard"])
def test_readme_api_snippet_runs_pasted_into_a_file(tmp_path, guarded):
    snippet = readme_blocks("python")[0]
    script = tmp_path / "snippet.py"
    script.write_text(snippet if guarded else _snippet_without_guard(snippet), encoding="utf-8")
    proc = _run([sys.executable, str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == "", proc.stderr[-3000:]
    first, streamed = proc.stdout.strip().splitlines()
    assert first.split()[0] == QUESTION_ANSWER and streamed.strip() == QUESTION_ANSWER, proc.stdout
