"""`longctx serve` on loopback, driven by the real `openai` client (and raw HTTP where a client
would refuse to send the body): the shipped needle model through its chat template, a follow-up
reusing the cached document, streaming, seeds, stop strings, bad bodies, the bounded queue, a
client that goes away, a worker killed mid-request, a bounded load test, and SIGTERM leaving no
process. One server (burst on 2 workers, queue of 3) serves every test of the module in order.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from helpers import REPO, TESTS, assert_none_left, run_cli
from longctx.eval.tasks import is_correct, make_sample
from longctx.models import load_tokenizer

pytestmark = pytest.mark.slow
MODEL = os.path.join(REPO, "examples", "models", "needle-llama")
KEY = "sk-test"
MARKER = f"serve-{os.getpid()}"
DOCUMENT = open(os.path.join(REPO, "examples", "data", "haystack.txt")).read().rstrip("\n")
QUESTION = json.load(open(os.path.join(REPO, "examples", "data", "question.json")))["question"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """(base URL, server process); SIGTERM at the end must leave no process."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]), LONGCTX_FAULT_RUN=MARKER)
    proc = subprocess.Popen([sys.executable, "-m", "longctx.cli", "serve", "--model", MODEL, "--method", "burst",
                             "--nproc", "2", "--port", str(port), "--api-key", KEY, "--max-queue", "3",
                             "--max-body-mb", "1", "--cache-gib", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"the server did not start: {proc.stdout.read()}")
    yield base, proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    assert_none_left(MARKER)


def client(server, **options):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, **options)


def ask(server, document=DOCUMENT, question=QUESTION, client_options=None, **options):
    messages = [{"role": "system", "content": document}, {"role": "user", "content": question}]
    return client(server, **(client_options or {})).chat.completions.create(model="needle-llama", messages=messages,
                                                  **{"max_tokens": 4, "temperature": 0, **options})


def metric(server, name):
    text = httpx.get(f"{server[0]}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_chat_answers_and_a_follow_up_reuses_the_document(server):
    models = client(server).models.list()
    assert [model.id for model in models.data] == ["needle-llama"]
    first = ask(server)
    assert first.choices[0].message.content.strip() == "42" and first.choices[0].finish_reason == "stop"
    follow_up = ask(server)
    assert follow_up.choices[0].message.content == first.choices[0].message.content
    tokens = load_tokenizer(MODEL)(DOCUMENT)["input_ids"]
    assert follow_up.usage.prompt_tokens_details.cached_tokens == len(tokens) > 0
    assert metric(server, "longctx_cache_hits_total") >= 1


def test_completions_stream_with_a_document(server):
    stream = client(server).completions.create(model="needle-llama", prompt=QUESTION, max_tokens=4, temperature=0,
                                               stream=True, stream_options={"include_usage": True},
                                               extra_body={"document": DOCUMENT})
    chunks = list(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices).strip() == "42"
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0
    plain = client(server).completions.create(model="needle-llama", prompt=QUESTION, max_tokens=4, temperature=0,
                                              extra_body={"document": DOCUMENT})
    assert plain.choices[0].text.strip() == "42" and plain.object == "text_completion"


def test_seed_reproduces_a_sampled_answer_and_stop_cuts_it(server):
    sampled = [ask(server, "Carla opens the window. " * 40, "Tom", max_tokens=12, temperature=1.0, seed=7)
               .choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1] and sampled[0]
    stopped = ask(server, stop=["2"])
    assert stopped.choices[0].message.content.strip() == "4" and stopped.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("body,status,words", [
    ({"model": "needle-llama"}, 400, "messages"),
    ({"model": "needle-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "needle-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}, 400, "max_tokens"),
    ({"model": "needle-llama", "messages": [{"role": "user", "content": "x"}], "best_of": 2}, 400, "best_of"),
    ({"model": "needle-llama", "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "other"),
    ({"model": "needle-llama", "messages": [{"role": "user", "content": "x " * 600_000}]}, 413, "larger"),
])
def test_bad_bodies_get_one_message(server, body, status, words):
    reply = httpx.post(f"{server[0]}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                       timeout=60)
    assert reply.status_code == status
    message = reply.json()["error"]["message"]
    assert words in message and "\n" not in message


def test_api_key_is_required_except_for_health(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server[0]}/v1", api_key="wrong").models.list()
    assert httpx.get(f"{server[0]}/v1/models").status_code == 401
    assert httpx.get(f"{server[0]}/health").status_code == 200
    assert ask(server).choices[0].message.content.strip() == "42"


def test_full_queue_answers_429_with_retry_after(server):
    replies = []

    def send(index):
        body = {"model": "needle-llama", "max_tokens": 2, "temperature": 0,
                "messages": [{"role": "user", "content": f"{index} " + DOCUMENT[: 6000 + 50 * index]}]}
        replies.append(httpx.post(f"{server[0]}/v1/chat/completions", json=body, timeout=300,
                                  headers={"Authorization": f"Bearer {KEY}"}))

    threads = [threading.Thread(target=send, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [reply for reply in replies if reply.status_code == 429]
    assert refused and all(int(reply.headers["Retry-After"]) >= 1 for reply in refused)
    assert all(reply.status_code == 200 for reply in replies if reply.status_code != 429)


def test_a_client_that_goes_away_cancels_its_request(server):
    before = metric(server, 'longctx_requests_total{endpoint="/v1/chat/completions",outcome="cancelled"')
    decoded = metric(server, "longctx_decoded_tokens_total")
    stream = ask(server, max_tokens=400, stream=True, extra_body={"ignore_eos": True})  # ~10 s unless cancelled
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 60
    while metric(server, 'longctx_requests_total{endpoint="/v1/chat/completions",outcome="cancelled"') == before:
        assert time.monotonic() < deadline, "the request was not cancelled"
        time.sleep(0.2)
    assert ask(server).choices[0].message.content.strip() == "42"
    assert metric(server, "longctx_decoded_tokens_total") - decoded < 100  # the workers stopped early


def test_a_killed_worker_fails_its_request_and_the_pool_restarts(server):
    workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(server[1].pid)], capture_output=True,
                                                  text=True).stdout.split()]
    reply = {}

    def send():
        try:
            reply["answer"] = ask(server, "Tom sleeps. " + DOCUMENT, client_options={"max_retries": 0},
                                  max_tokens=300, extra_body={"ignore_eos": True})  # seconds of work
        except openai.APIStatusError as exc:
            reply["error"] = exc

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(1.0)
    os.kill(max(workers), signal.SIGKILL)
    thread.join()
    assert reply["error"].status_code == 500 and "worker" in reply["error"].message
    assert ask(server, client_options={"timeout": 300}).choices[0].message.content.strip() == "42"
    assert metric(server, "longctx_pool_restarts_total") == 1


def test_load_eight_clients_half_follow_ups(server):
    tokenizer = load_tokenizer(MODEL)
    answers, latencies, errors = [], [], []

    def run(index):
        chat = client(server, max_retries=20)
        for turn in range(25):
            sample = make_sample("niah_single", 384, seed=index, index=turn // 2, tokenizer=tokenizer)
            start = time.monotonic()
            try:
                stream = chat.chat.completions.create(
                    model="needle-llama", max_tokens=3, temperature=0, stream=True,
                    messages=[{"role": "system", "content": sample.document},
                              {"role": "user", "content": sample.question}])
                text = ""
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        latencies.append(time.monotonic() - start) if not text else None
                        text += chunk.choices[0].delta.content
                answers.append((sample, text))
            except openai.OpenAIError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors and len(answers) == 200
    wrong = [(sample.answer, text) for sample, text in answers if not is_correct(text, sample)]
    assert not wrong
    latencies.sort()
    print(f"time to first token over 200 requests: p50 {latencies[100]:.3f} s, p99 {latencies[197]:.3f} s")
    assert metric(server, "longctx_cache_hits_total") >= 96


def test_generate_chat_renders_the_template():
    """`longctx generate --chat`: the document as the system message, the question as the user's."""
    proc = run_cli("generate", "--model", MODEL, "--method", "dense", "--chat", "--max-new-tokens", "3",
                   "--doc", os.path.join(REPO, "examples", "data", "haystack.txt"), "--question", QUESTION)
    assert proc.returncode == 0, proc.stderr
    assert "answer: 42" in proc.stdout
