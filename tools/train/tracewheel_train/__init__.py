"""train: Train the policy on merged samples: SFT or GRPO, with Accelerate or Ray."""
