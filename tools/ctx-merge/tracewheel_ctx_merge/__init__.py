"""ctx-merge: Merge the LLM calls of each trajectory into few training sequences with loss masks."""
