"""rollout: Run an agent workflow on each task N times against a recording vLLM endpoint."""
