"""APB: anchor block + compressed passing blocks, and StarAttention as its special case."""
