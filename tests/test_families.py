"""Model families behind one adapter (`longctx.models.family`): the registry picks the adapter
by model type, a plug-in adapter (tests/plugins/chat_family.py: its own prompt layout, inputs
embedded on each host) runs `generate` end to end and answers as transformers does on the
same prompt, and a family that does not import is one error line."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import run_cli
from longctx.families.qwen2_5_vl import Qwen25VLFamily
from longctx.models.family import TextFamily, family_for
from plugins.chat_family import DOCUMENT, QUESTION, ChatFamily


class _Config:
    def __init__(self, model_type):
        self.model_type = model_type


def test_the_registry_picks_the_adapter_by_model_type():
    assert type(family_for(_Config("qwen2_5_vl"))) is Qwen25VLFamily
    assert type(family_for(_Config("llama"))) is TextFamily and family_for(_Config("llama")).model_type == "llama"
    assert type(family_for(_Config("llama"), "plugins.chat_family:ChatFamily")) is ChatFamily


def test_a_plug_in_family_runs_generate_end_to_end(tiny_model, tmp_path):
    """burst on 2 local workers, the plug-in's template and per-host embeddings: the tokens of
    transformers' own greedy generate on the templated prompt."""
    path = tiny_model("llama")
    document, question = "Numbers: " + " ".join(str(i) for i in range(70)), "Next?"
    doc = tmp_path / "doc.txt"
    doc.write_text(document)
    proc = run_cli("generate", "--model", path, "--family", "plugins.chat_family:ChatFamily", "--method", "burst",
                   "--nproc", "2", "--doc", str(doc), "--question", question, "--max-new-tokens", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer(DOCUMENT.format(document=document) + QUESTION.format(question=question),
                       return_tensors="pt")["input_ids"]
    assert payload["doc_tokens"] + payload["question_tokens"] == prompt.shape[1]
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    with torch.inference_mode():
        expected = model.generate(prompt, max_new_tokens=5, do_sample=False)[0, prompt.shape[1]:].tolist()
    assert payload["tokens"] == expected[: len(payload["tokens"])] and payload["nproc"] == 2


def test_a_family_that_does_not_import_is_one_error_line(tiny_model, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("a document")
    proc = run_cli("generate", "--model", tiny_model("llama"), "--family", "plugins.chat_family:Nope", "--doc", str(doc))
    assert proc.returncode == 2
    assert proc.stderr == ("longctx: error: cannot import model family 'plugins.chat_family:Nope': module "
                           "'plugins.chat_family' has no 'Nope'\n")
