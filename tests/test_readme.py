"""Every README example marked `readme-test` runs as written, and the Python API snippet runs
pasted into a file (with its `__main__` guard, and without it).

The README marks the examples that need no GPU and no cluster with a fence tag:
```` ```bash readme-test ```` (each command, `\\` continuations joined, runs in bash from the
repository root with the virtual environment's `bin/` first on PATH) and
```` ```python readme-test ```` (saved to a file, run from the repository root). Their sizes
are CI-sized; the long reproductions are behind `benchmarks/reproduce_readme.sh`.

Every case runs alone (`-k` picks any one) and apart from every other run: the files a command
writes under /tmp go to the test's own temporary directory instead (`/tmp/` is replaced in the
command), and a command that reads such a file runs in the same case after the earlier
commands of its block that name that file (`readme_cases`). The cost cache (`XDG_CACHE_HOME`)
points there too, so nothing outside the test's directory is written.
~3 minutes on the 2-core CPU machine (each command 3-30 s).
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import REPO

README = os.path.join(REPO, "README.md")
FENCE = re.compile(r"^( *)```(\w+) (readme-test[\w-]*)\n(.*?)^\1```", re.M | re.S)
QUESTION_ANSWER = "42"  # the needle of examples/data/haystack.txt (examples/data/question.json)
TEMP_PATH = re.compile(r"/tmp/[\w.-]+")


def readme_blocks(language, tag="readme-test"):
    """Bodies (dedented) of the README's fenced blocks tagged `<language> <tag>` (`readme-test`:
    each command runs to its end; `readme-test-serve`: the "Serving" section's server and its
    clients, `test_readme_serving_examples_run_as_written`)."""
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    return [textwrap.dedent(match.group(4)) for match in FENCE.finditer(text)
            if match.group(2) == language and match.group(3) == tag]


def block_commands(block):
    """The shell commands of one bash block, continuation lines joined."""
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def readme_commands():
    """Every shell command of the bash blocks, in README order."""
    return [command for block in readme_blocks("bash") for command in block_commands(block)]


def readme_cases():
    """The bash commands grouped into cases that run alone: a command and, before it, the earlier
    commands of its block that name one of its /tmp paths (transitively). A command that a later
    one needs runs in that one's case, not in a case of its own; every command runs once."""
    cases = []
    for block in readme_blocks("bash"):
        commands = block_commands(block)
        needs = [set() for _ in commands]
        for index, command in enumerate(commands):
            paths = set(TEMP_PATH.findall(command))
            for earlier in range(index):
                if paths & set(TEMP_PATH.findall(commands[earlier])):
                    needs[index] |= {earlier} | needs[earlier]
        needed = set().union(*needs) if needs else set()
        cases += [[commands[i] for i in sorted(needs[index])] + [command]
                  for index, command in enumerate(commands) if index not in needed]
    return cases


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
    assert sorted(command for case in readme_cases() for command in case) == sorted(commands)  # each once


def test_cases_keep_a_command_with_the_commands_it_needs():
    cases = [case for case in readme_cases() if len(case) > 1]
    assert any(case[0].startswith("longctx tiny-model /tmp/longctx-tiny-vl") and "--video /tmp/longctx-clip.mp4"
               in case[-1] and len(case) == 3 for case in cases)
    assert any(case[-1].startswith("longctx generate --model /tmp/longctx-tiny ") for case in cases)


def case_id(case):
    """A readable test id: the command's first two words and its --method / --length values."""
    words = case[-1].split()
    values = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("--method", "--length")]
    return " ".join(words[:2] + values)


@pytest.mark.parametrize("case", readme_cases(), ids=case_id)
def test_readme_command_runs_as_written(case, tmp_path):
    """The case's commands in order, each from the repository root, its /tmp files in `tmp_path`."""
    for command in case:
        proc = _run(["bash", "-c", command.replace("/tmp/", f"{tmp_path}/")], tmp_path)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        if "examples/data/haystack.txt" in command:  # the shipped model answers the shipped needle
            assert f"answer: {QUESTION_ANSWER}" in proc.stdout, proc.stdout
        if command.startswith("longctx compare"):
            assert " DIFF " not in proc.stdout, proc.stdout  # exact methods: the same tokens as dense


@pytest.mark.slow
def test_readme_serving_examples_run_as_written(tmp_path):
    """The "Serving" section's `readme-test-serve` blocks: the `longctx serve` command runs in the
    background until it answers /health; the curl command and the openai snippet then run as
    written against it and print the needles' answers; SIGTERM stops the server and its workers."""
    (server,), (curl,) = [block_commands(block) for block in readme_blocks("bash", "readme-test-serve")]
    snippet, = readme_blocks("python", "readme-test-serve")
    port = re.search(r"--port (\d+)", server).group(1)
    proc = subprocess.Popen(["bash", "-c", f"exec {server}"], cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        health = f"curl -sf http://127.0.0.1:{port}/health"
        for _ in range(480):
            if proc.poll() is not None or _run(["bash", "-c", health], tmp_path).returncode == 0:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        answer = _run(["bash", "-c", curl], tmp_path)
        assert json.loads(answer.stdout)["choices"][0]["text"].strip() == "57", answer.stdout
        script = tmp_path / "client.py"
        script.write_text(snippet, encoding="utf-8")
        printed = _run([sys.executable, str(script)], tmp_path)
        assert printed.stdout.split("\n")[:2] == ["first 42 cached tokens: 0", "follow-up 42 cached tokens: 4073"], \
            printed.stdout + printed.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)


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
