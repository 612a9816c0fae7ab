"""The CLI (`compare`, `generate --json`, `tiny-model`, `methods`) and the torchrun entry."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import REPO, dense_result, run_cli
from longctx.models.family import encode_prompt


def test_compare_json_reports_exact_agreement(tiny_model):
    proc = run_cli("compare", "--model", tiny_model("llama-gqa4"), "--methods", "burst,ring,ulysses,allgather",
                   "--nproc", "4", "--length", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [row["method"] for row in report["results"]] == ["burst", "ring", "ulysses", "allgather"]
    for row in report["results"]:
        assert row["hidden_rel_err"] <= 1e-4 and row["tokens_match"], row
        assert row["speedup_vs_hf"] == pytest.approx(report["hf_sdpa"]["median_s"] / row["ttft_s"])
    assert report["hf_sdpa"]["argmax"] == report["reference"]["tokens"][0]


def test_generate_json_has_answer_and_timings(tiny_model, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("The cat sat on the mat. " * 30)
    proc = run_cli("generate", "--model", tiny_model("llama"), "--method", "allgather", "--nproc", "2",
                   "--doc", str(doc), "--question", "Where?", "--max-new-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    for key in ("answer", "prefill_s", "decode_s", "method", "nproc", "plan"):
        assert key in payload
    assert payload["method"] == "allgather" and payload["nproc"] == 2 and len(payload["tokens"]) == 4


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_tiny_model_command_writes_loadable_model(tmp_path, family):
    proc = run_cli("tiny-model", str(tmp_path / family), "--family", family)
    assert proc.returncode == 0, proc.stderr
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / family))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / family))
    assert model.config.model_type == family
    assert tokenizer.decode(tokenizer("héllo wörld", add_special_tokens=False)["input_ids"]) == "héllo wörld"


def test_methods_lists_exact_methods():
    proc = run_cli("methods")
    assert {"dense", "ring", "burst", "ulysses", "allgather"} <= set(proc.stdout.split())


def _summary_shape(stdout):
    """The lines after the answer with every number masked: what `generate` and the torchrun
    entry both print (method and workers, sizes, each worker's share, timings)."""
    import re

    return [re.sub(r"\d+(?:[,.]\d+)*", "N", line) for line in stdout.rstrip("\n").splitlines()[-3:]]


SUMMARY_SHAPE = ["method burst on N workers: document N tokens, question N tokens",
                 "split (zigzag layout): N / N document tokens per worker",
                 "prefill N s (N tok/s), query N s, decode N s for N tokens"]


def test_torchrun_entry_matches_dense(tiny_model, tmp_path):
    """Rank 0 prints dense's answer, then the very lines `generate` prints after it."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun is installed with torch"
    model_dir = tiny_model("llama")
    doc = tmp_path / "doc.txt"
    doc.write_text("Numbers: " + " ".join(str(i) for i in range(120)))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "launch.torchrun",
                           "--model", model_dir, "--method", "burst", "--doc", str(doc), "--question", "Next?",
                           "--max-new-tokens", "5"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    doc_ids, query_ids = encode_prompt(tokenizer, doc.read_text(), "Next?")
    tokens = dense_result(model_dir, doc_ids, query_ids, max_new_tokens=5).tokens
    assert proc.stdout.startswith("answer: " + tokenizer.decode(tokens, skip_special_tokens=True) + "\n")
    assert _summary_shape(proc.stdout) == SUMMARY_SHAPE


@pytest.mark.slow
@pytest.mark.parametrize("flags,needle", [
    (("--max-new-tokens", "40000"), "more than the model's 32768 positions"),  # refused on rank 0, sent to all
    (("--video", "clip.mp4", "--doc", None), "a video needs a video-language model"),  # used to reach no check
])
def test_torchrun_entry_refuses_what_generate_refuses(tiny_model, tmp_path, flags, needle):
    """The same request path: one line, the same message, from `generate` and from the torchrun
    entry (printed once per machine, by its local rank 0; the entry used to check only the
    lengths)."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    doc = tmp_path / "doc.txt"
    doc.write_text("Numbers: " + " ".join(str(i) for i in range(60)))
    args = ["--model", tiny_model("llama"), "--doc", str(doc), "--question", "Next?"]
    for flag, value in zip(flags[::2], flags[1::2]):
        if value is None:
            index = args.index(flag)
            del args[index:index + 2]
        else:
            args += [flag, value]
    generate = run_cli("generate", *args, "--nproc", "2")
    lines = [line for line in generate.stderr.splitlines() if line.startswith("longctx: error: ")]
    assert generate.returncode == 2 and len(lines) == 1 and needle in lines[0], generate.stderr
    message = lines[0].removeprefix("longctx: error: ")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "launch.torchrun", *args],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("longctx: error (rank ")]
    assert len(lines) == 1 and lines[0].startswith("longctx: error (rank 0 on "), proc.stderr[-2000:]  # once per machine
    assert lines[0].split("): ", 1)[1] == message, proc.stderr[-2000:]


def test_plugin_method_declares_its_own_option_through_the_cli(tiny_model, tmp_path):
    """A plug-in (tests/plugins/uneven.py) adds `--uneven-seed` with no edit in longctx: `plan`
    uses it, and `generate` runs the seeded uneven plan and gives dense's tokens."""
    from plugins.uneven import random_sizes

    method = "plugins.uneven:UnevenUlysses"
    for seed in (1, 2):
        proc = run_cli("plan", "--method", method, "--uneven-seed", str(seed), "--length", "1000", "--nproc", "4",
                       "--balance", "equal", "--json")
        assert proc.returncode == 0, proc.stderr
        hosts = json.loads(proc.stdout)["plans"]["equal"]["hosts"]
        assert [host["tokens"] for host in hosts] == random_sizes(1000, 4, seed)
        assert all(host["est_ms"] > 0 for host in hosts)
    doc = tmp_path / "doc.txt"
    doc.write_text("Numbers: " + " ".join(str(i) for i in range(90)))
    common = ("--model", tiny_model("llama"), "--doc", str(doc), "--question", "Next?", "--max-new-tokens", "4",
              "--json")
    runs = {}
    for name, extra in (("dense", ("--method", "dense", "--nproc", "1")),
                        ("plugin", ("--method", method, "--nproc", "2", "--uneven-seed", "5"))):
        proc = run_cli("generate", *common, *extra)
        assert proc.returncode == 0, proc.stderr
        runs[name] = json.loads(proc.stdout)
    tokens = runs["dense"]["plan"]["doc_len"]
    assert [host["tokens"] for host in runs["plugin"]["plan"]["hosts"]] == random_sizes(tokens, 2, 5)
    assert runs["plugin"]["tokens"] == runs["dense"]["tokens"]
    assert runs["plugin"]["method"] == runs["plugin"]["plan"]["method"] == method  # its own name, not "ulysses"
    bad = run_cli("plan", "--method", method, "--uneven-seed", "-1", "--length", "100", "--nproc", "2")
    assert bad.returncode == 2 and "--uneven-seed must be >= 0" in bad.stderr


def test_a_plugin_that_does_not_import_is_reported_before_its_options(tmp_path):
    """`--method tests.plugins.uneven:UnevenRing --uneven-seed 3` from a folder where `tests` is
    not importable: the import failure, with what to do, not "unrecognized arguments"."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}  # longctx installed, tests/ not
    for where, hint in ((REPO, "PYTHONPATH=. longctx"), (str(tmp_path), "is its folder on PYTHONPATH")):
        proc = subprocess.run([sys.executable, "-m", "longctx.cli", "generate", "--model", "m", "--doc", "d",
                               "--method", "tests.plugins.uneven:UnevenRing", "--uneven-seed", "3"],
                              capture_output=True, text=True, timeout=120, cwd=where,
                              env={**env, "PYTHONSAFEPATH": "1"})
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("longctx: error: cannot import method 'tests.plugins.uneven:UnevenRing': no "
                                      "module named 'tests'") and hint in proc.stderr, proc.stderr


SHIPPED = os.path.join(REPO, "examples", "models", "needle-llama")


def test_compare_reference_stops_at_eos_like_the_methods():
    """The shipped model ends its answer with </s> on random ids too: dense (in-process
    reference) and the methods stop there alike, so exact methods report the same tokens."""
    proc = run_cli("compare", "--model", SHIPPED, "--methods", "burst", "--nproc", "2", "--length", "300",
                   "--max-new-tokens", "8", "--no-baseline", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    eos = AutoTokenizer.from_pretrained(SHIPPED).eos_token_id
    assert report["reference"]["tokens"][-1] == eos and len(report["reference"]["tokens"]) < 8
    assert [row["tokens_match"] for row in report["results"]] == [True]


def test_generate_dense_runs_on_one_worker_and_says_so(tiny_model, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("Numbers: " + " ".join(str(i) for i in range(60)))
    proc = run_cli("generate", "--model", tiny_model("llama"), "--method", "dense", "--doc", str(doc),
                   "--question", "Next?", "--max-new-tokens", "2", "--json")  # --nproc left at its default, 2
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "longctx: dense runs on 1 worker, not 2"
    assert json.loads(proc.stdout)["nproc"] == 1


def test_generate_text_output_streams_the_answer(tiny_model, tmp_path):
    """Text mode prints `answer: ` before decoding and then each piece (flushed); the text
    equals the JSON answer of the same request."""
    doc = tmp_path / "doc.txt"
    doc.write_text("Numbers: " + " ".join(str(i) for i in range(60)))
    common = ("generate", "--model", tiny_model("llama"), "--doc", str(doc), "--question", "Next?",
              "--max-new-tokens", "5")
    text, as_json = run_cli(*common), run_cli(*common, "--json")
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    assert text.stdout.splitlines()[0] == "answer: " + json.loads(as_json.stdout)["answer"]
    assert _summary_shape(text.stdout) == SUMMARY_SHAPE  # what the torchrun entry prints too


def test_methods_json_describes_every_registered_method():
    proc = run_cli("methods", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)["methods"]}
    assert list(rows) == run_cli("methods").stdout.split()
    assert rows["apb"]["class"] == "apb.method:APBAttention" and "--anchor-len" in rows["apb"]["options"]
    assert rows["ring"]["options"] == ["--intra-size"] and rows["dense"]["summary"]


def test_help_shows_defaults_and_task_names():
    from longctx.eval.tasks import TASKS

    eval_help = " ".join(run_cli("eval", "--help").stdout.split())
    assert all(task in eval_help for task in TASKS)
    assert "(default: 4096)" in eval_help and "(default: niah_single)" in eval_help
    assert "seed of the generated samples (default: 0)" in eval_help
    generate_help = " ".join(run_cli("generate", "--help").stdout.split())
    assert "(default: 32)" in generate_help and "(default: burst)" in generate_help


def test_torchrun_entry_offers_nothing_torchrun_takes_for_itself():
    """Every option of `python -m launch.torchrun` reaches the script through torchrun's own
    parser (an option torchrun matched, exactly or as an ambiguous prefix like --nproc, would
    stop the job before it starts)."""
    from torch.distributed.run import get_args_parser

    from launch.torchrun import build_parser

    torchrun = get_args_parser()
    options = [option for action in build_parser()._actions for option in action.option_strings
               if option not in ("-h", "--help")]
    assert "--nproc" not in options and "--model" in options
    for option in options:
        args = torchrun.parse_args(["--standalone", "--nproc-per-node", "2", "-m", "launch.torchrun", option, "1"])
        assert args.training_script_args == [option, "1"], option
