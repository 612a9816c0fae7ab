"""Where vn-qwen-vl's counting head reads, and the count that reading implies.

    python examples/inspect_video_counting.py --model examples/models/vn-qwen-vl --length 4096 --samples 20

For each `video_counting` sample (seed 5000, the accuracy table's): the model's answer through
the training script's forward, and the attention of layer 1's head 1 at the answer prefix (the
head the training script supervises to read BOS and every needle token evenly): its mass on BOS,
on the needle tokens, on everything else, and the count its BOS share implies when the reading
is even (each needle shows in two frame pairs, so an even reading gives BOS 1 / (2 n + 1)).
A wrong count with little mass elsewhere and an implied count off the true one says the
reading is uneven, not diluted by the haystack.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import train_video_model as recipe  # noqa: E402
from longctx.eval.video_needles import make_video_sample  # noqa: E402


def counting_reading(model, tok, sample):
    """{answer, bos, needles, elsewhere, implied} for one counting sample: the greedy answer word
    and layer 1 head 1's attention at the last prompt row (model: a Qwen2_5_VLForConditionalGeneration
    whose text attention is `recipe.register_capture()`'s)."""
    embeds, positions, _ = recipe.clip_batch(model, tok, [sample], random.Random(0))
    store = {}
    with torch.no_grad():
        out = model.model.language_model(inputs_embeds=embeds[:, :sample.length],
                                         position_ids=positions[:, :, :sample.length], use_cache=False, capture=store)
        answer = tok.convert_ids_to_tokens(model.lm_head(out.last_hidden_state[0, -1]).argmax().item())
        query, key = store[1]
        text = model.config.text_config
        scale = (text.hidden_size // text.num_attention_heads) ** -0.5
        final = sample.length - 1
        group = query.shape[1] // key.shape[1]
        weights = torch.softmax((key[0, 1 // group, :final + 1] @ query[0, 1, final]) * scale, dim=0)
    needles = sorted(row for rows in recipe.needle_tokens(sample).values() for row in rows)
    bos, on_needles = weights[0].item(), weights[needles].sum().item()
    share = bos / (bos + on_needles)
    return {"answer": answer, "bos": bos, "needles": on_needles, "elsewhere": 1.0 - bos - on_needles,
            "implied": (1.0 / share - 1.0) / 2.0}


def main(argv=None):
    """Print one line per sample and the mean absolute error of the implied count."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="examples/models/vn-qwen-vl")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5000)
    args = parser.parse_args(argv)
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.set_num_threads(1)
    tok = recipe.build_tokenizer()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    model.config.text_config._attn_implementation = recipe.register_capture()
    errors = []
    for index in range(args.samples):
        sample = make_video_sample("video_counting", args.length, args.seed, index)
        reading = counting_reading(model, tok, sample)
        errors.append(abs(reading["implied"] - int(sample.answer)))
        print(f"sample {index}: true {sample.answer} answer {reading['answer']} | BOS {reading['bos']:.3f} "
              f"needles {reading['needles']:.3f} elsewhere {reading['elsewhere']:.4f} implied count "
              f"{reading['implied']:.2f}", flush=True)
    print(f"mean |implied - true| {sum(errors) / len(errors):.2f} over {len(errors)} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
