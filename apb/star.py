"""StarAttention: APB's special case with an anchor of leading document tokens and no passing.

Hosts > 0 prepend the anchor (the first l_a document tokens at positions 0..l_a-1, default
the whole first block, `--anchor-len` to change) and run local causal attention over
[anchor ; block]; there is no communication in prefill and no question in the anchor. The
query and generated tokens attend to every host's cache exactly, as in APB.
"""

from apb.method import APBAttention, APBPlanner


class StarPlanner(APBPlanner):
    """APB's plan with anchor = first block (by default), no question, no passing, no compressor."""

    star = True


class StarAttention(APBAttention):
    """StarAttention (Acharya et al.) on APB's machinery: anchor = first block, no passing blocks, no compressor."""

    name = "star"
    kv_depends_on_question = False  # the anchor holds document tokens only
    Planner = StarPlanner
