"""Mask cases every attention kernel is checked on against the reference (shared by the
Triton and the fused CPU kernel tests)."""

# (batch, q_heads, kv_heads, q_len, k_len, head_dim, causal, anchor_len, prefix_len)
MASK_CASES = [
    (1, 2, 2, 1, 1, 16, True, 0, 0),
    (1, 2, 1, 7, 7, 32, True, 0, 0),
    (2, 2, 1, 7, 7, 16, False, 0, 0),
    (1, 4, 1, 130, 130, 16, True, 0, 0),
    (1, 4, 2, 1, 257, 32, True, 0, 0),  # decode-like: one query over many keys
    (1, 2, 1, 7, 130, 64, True, 0, 0),  # Sq < Sk: bottom-right diagonal
    (1, 2, 2, 130, 7, 16, True, 0, 0),  # Sq > Sk: the first 123 rows see no key
    (1, 2, 1, 257, 130, 16, False, 0, 0),
    (1, 2, 2, 130, 257, 32, False, 0, 0),
    (1, 2, 1, 130, 257, 16, True, 50, 90),  # APB: anchor rows skip the prefix
    (1, 2, 2, 130, 130, 16, True, 130, 40),  # whole query block inside the anchor
    (1, 4, 1, 70, 200, 16, False, 33, 200),  # anchor rows see nothing at all
    (1, 2, 1, 40, 40, 128, True, 0, 0),
    (1, 4, 2, 60, 90, 16, True, 80, 20),  # anchor longer than the queries
    (1, 2, 1, 30, 20, 16, True, 5, 8),  # Sq > Sk with the APB rule
]


def case_id(case):
    """Readable pytest id of a mask case."""
    b, hq, hkv, sq, sk, d, causal, anchor, prefix = case
    return f"b{b}-h{hq}:{hkv}-q{sq}-k{sk}-d{d}-{'causal' if causal else 'full'}-a{anchor}p{prefix}"
