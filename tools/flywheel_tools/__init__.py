"""The toolkit's command-line tools, one package per folder (mapped in pyproject.toml)."""
