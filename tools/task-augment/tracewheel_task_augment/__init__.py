"""task-augment: grow a small task set (new tasks like a few, paraphrases, tasks from documents)."""
