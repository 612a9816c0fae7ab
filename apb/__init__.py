"""APB: anchor block + compressed passing blocks, and StarAttention as its special case.

What other method packages may use (they import it from `apb`, never from its modules): the
query-aware key selection, the published size rule and the passing counters.
"""

from apb.compress import select_by_question
from apb.layout import rule_length
from apb.passing import PassingStats

__all__ = ["select_by_question", "rule_length", "PassingStats"]
