"""Exact sequence-parallel attention: dense reference, ring / BurstAttention, all-gather, Ulysses."""
