"""trace-filter: keep the good tasks, drop the bad ones (LLM judge, rubrics, rules, dedup)."""
