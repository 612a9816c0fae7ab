"""Simulated hosts (`longctx.simulate`): what each host receives, and the critical-path model."""

import pytest
import torch

from longctx.compare import random_prompt
from longctx.config import RunConfig
from longctx.models import load_model
from longctx.simulate import ForwardTrace, HostTrace, LayerTrace, Link, SimulatedComm, Transfer, _Recorder
from longctx.simulate import critical_path, simulate_hosts

CPU = torch.device("cpu")


def _comm(rank=1, world=3):
    recorder = _Recorder(CPU, rank)
    recorder.trace.forwards.append(ForwardTrace())
    recorder.layer = 0
    return SimulatedComm(rank, world, recorder), recorder


def test_collectives_return_real_shapes_and_record_received_bytes():
    comm, recorder = _comm(rank=1, world=3)
    mine = torch.ones(2, 5, 4)
    parts = comm.all_gather(mine, sizes=[3, 5, 7], dim=1)
    assert [tuple(p.shape) for p in parts] == [(2, 3, 4), (2, 5, 4), (2, 7, 4)] and parts[1] is mine
    received = comm.all_to_all(torch.ones(12, 3), [4, 4, 4], [2, 6, 3])
    assert received.shape == (11, 3)
    pending = comm.exchange(mine, (2, 9, 4), send_to=2, recv_from=0)
    assert pending.wait().shape == (2, 9, 4)
    transfers = recorder.trace.forwards[0].layers[0].transfers
    assert [t.nbytes for t in transfers] == [2 * 7 * 8 * 4, (2 + 3) * 3 * 4, 2 * 9 * 4 * 4]
    assert [t.sent for t in transfers] == [2 * 7 * 8 * 4, (4 + 4) * 3 * 4, 2 * 5 * 4 * 4]  # a ring forwards parts
    assert transfers[0].window_s is None and transfers[2].window_s >= 0.0
    assert comm.broadcast_object({"plan": 1}) == {"plan": 1}


def _trace(rank, layers, other=0.0):
    """HostTrace of one forward: layers = [(compute_s, [Transfer, ...]), ...]."""
    forward = ForwardTrace([LayerTrace(c, list(t)) for c, t in layers], other)
    return HostTrace(rank, 10, [forward])


def test_critical_path_syncs_only_layers_with_communication():
    link = Link(gb_per_s=1.0, latency_us=0.0)
    # no communication: hosts run independently, the slowest total wins
    free = [_trace(0, [(1.0, []), (3.0, [])]), _trace(1, [(3.0, []), (1.0, [])])]
    assert critical_path(free, link)["total_s"] == pytest.approx(4.0)
    # a blocking transfer in each layer: the layer ends with its slowest host
    gb = Transfer(nbytes=10**9, messages=1)
    synced = [_trace(0, [(1.0, [gb]), (3.0, [gb])]), _trace(1, [(3.0, [gb]), (1.0, [gb])])]
    assert critical_path(synced, link)["total_s"] == pytest.approx(4.0 + 4.0)


def test_posted_transfers_hide_behind_their_window():
    link = Link(gb_per_s=1.0, latency_us=0.0)
    hidden = Transfer(nbytes=10**9, messages=1, window_s=1.5)
    partly = Transfer(nbytes=2 * 10**9, messages=1, window_s=0.5)
    traces = [_trace(0, [(2.0, [hidden, partly])], other=0.25)]
    result = critical_path(traces, link)
    assert result["exposed_comm_s"] == [pytest.approx(1.5)]
    assert result["total_s"] == pytest.approx(0.25 + 2.0 + 1.5)
    no_overlap = critical_path(traces, Link(gb_per_s=1.0, latency_us=0.0, overlap=False))
    assert no_overlap["total_s"] == pytest.approx(0.25 + 2.0 + 3.0)


def test_half_duplex_links_and_slow_hosts_take_longer():
    """Full duplex: a host receives while it sends; half duplex (gloo's TCP pairs): the two
    directions share the link; and a host never moves data faster than its own rate."""
    exchange = Transfer(nbytes=10**9, messages=2, sent=10**9)
    lopsided = Transfer(nbytes=10**9, messages=1, sent=3 * 10**9)
    assert Link(gb_per_s=1.0, latency_us=0.0).seconds(exchange) == pytest.approx(1.0)
    assert Link(gb_per_s=1.0, latency_us=0.0).seconds(lopsided) == pytest.approx(3.0)
    assert Link(gb_per_s=1.0, latency_us=0.0, duplex=False).seconds(exchange) == pytest.approx(2.0)
    assert Link(gb_per_s=1.0, latency_us=250.0, duplex=False).seconds(exchange) == pytest.approx(2.0005)
    assert Link(gb_per_s=1.0, latency_us=0.0, host_gb_per_s=0.5).seconds(exchange) == pytest.approx(4.0)
    assert Link(gb_per_s=1.0, latency_us=0.0, host_gb_per_s=10.0).seconds(exchange) == pytest.approx(1.0)
    assert Link(gb_per_s=1.0, latency_us=0.0).seconds(Transfer(nbytes=10**9, messages=1)) == pytest.approx(1.0)


@pytest.mark.parametrize("method,world,options", [("ring", 3, {}), ("burst", 3, {}), ("allgather", 3, {}),
                                                  ("ulysses", 2, {}), ("apb", 3, {"balance": "equal"}),
                                                  ("star", 3, {})])
def test_hosts_receive_what_the_method_sends(tiny_model, method, world, options):
    """Every host runs its prefill and query pass; the bytes it receives per prefill layer match
    the cost model's count of what the method moves."""
    model_dir = tiny_model("llama")
    model = load_model(model_dir, CPU, torch.float32)
    doc_ids, query_ids = random_prompt(256, 120, 5, seed=3)
    config = RunConfig(model=model_dir, method=method, nproc=world, **options)
    traces = simulate_hosts(model, config, doc_ids, query_ids, world, CPU)
    assert [trace.rank for trace in traces] == list(range(world))
    assert sum(trace.tokens for trace in traces) == len(doc_ids)
    from longctx.registry import method_class

    planner = method_class(method).planner_for(config).use_model(model.config)
    plan = planner.plan(len(doc_ids), len(query_ids), world)
    layers = model.config.num_hidden_layers
    for trace in traces:
        prefill, query = trace.forwards
        assert len(prefill.layers) == len(query.layers) == layers
        assert all(layer.compute_s > 0 for layer in prefill.layers)
        expected = planner.host_work(plan, plan.hosts[trace.rank]).recv_bytes
        for layer in prefill.layers:
            assert sum(t.nbytes for t in layer.transfers) == expected, (method, trace.rank)
        # query pass: every other host's (out, lse) per layer, fp32, for the question tokens
        heads, head_dim = model.config.num_attention_heads, model.config.head_dim
        assert sum(t.nbytes for t in query.layers[0].transfers) == (world - 1) * len(query_ids) * heads * (head_dim + 1) * 4


def test_dense_on_one_host_is_pure_compute(tiny_model):
    model_dir = tiny_model("llama")
    model = load_model(model_dir, CPU, torch.float32)
    doc_ids, query_ids = random_prompt(256, 64, 4, seed=1)
    traces = simulate_hosts(model, RunConfig(model=model_dir, method="dense", nproc=1), doc_ids, query_ids, 1, CPU)
    result = critical_path(traces, Link(gb_per_s=10.0))
    assert result["exposed_comm_s"] == [0.0]
    assert result["total_s"] == pytest.approx(traces[0].compute_s())


@pytest.mark.parametrize("frame_parallel", [True, False])
def test_video_hosts_encode_their_frames_in_a_forward_of_their_own(tmp_path, frame_parallel):
    """With a video each host first encodes what the method gives it: its share of the frames and
    an all-gather of the embeddings (frame-parallel), or every frame and no transfer; then the
    prefill (spava's question fused: no query pass)."""
    import numpy as np

    from longctx.families.qwen2_5_vl import load_video, video_prompt, video_token_count
    from longctx.models import load_tokenizer
    from longctx.models.tiny import make_tiny_model

    model_dir = make_tiny_model(str(tmp_path / "vl"), "qwen2_5_vl", seed=1)
    model = load_model(model_dir, CPU, torch.float32)
    video = load_video(np.random.default_rng(0).integers(0, 256, (24, 56, 56, 3), dtype=np.uint8), model_dir)
    doc_ids, query_ids = video_prompt(load_tokenizer(model_dir), video.grid, "what?")
    config = RunConfig(model=model_dir, method="spava", nproc=3, frame_parallel=frame_parallel)
    traces = simulate_hosts(model, config, doc_ids, query_ids, 3, CPU, media=video)
    embedding_bytes = video_token_count(video.grid) // 3 * model.config.text_config.hidden_size * 4
    for trace in traces:
        encoder, prefill = trace.forwards
        assert encoder.other_s > 0 and len(prefill.layers) == model.config.text_config.num_hidden_layers
        received = sum(t.nbytes for layer in encoder.layers for t in layer.transfers)
        assert received == (2 * embedding_bytes if frame_parallel else 0)  # the two other hosts' shares
    result = critical_path(traces, Link(gb_per_s=10.0))
    assert len(result["forwards_s"]) == 2
