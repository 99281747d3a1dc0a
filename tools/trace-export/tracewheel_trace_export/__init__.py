"""trace-export: AgentScope Studio databases to task records."""
