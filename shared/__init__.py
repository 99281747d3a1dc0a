"""flywheel: the library every tool of the tracing-feedback toolkit imports.

Modules, by what they hold:

- ``records``   the record contracts (task, rollout, sample) with validation
- ``jsonl``     streaming JSONL reader with line numbers, atomic writer
- ``cli``       click options and behaviour every tool shares, the summary line, progress
- ``config``    ``--config`` YAML files (including the seed's ``astuner`` section)
- ``client``    OpenAI-compatible client factory, retries, bounded concurrency
- ``models``    model resolution, the embedded SmolLM2 model
- ``vllm``      the vLLM server launcher
"""

__version__ = "0.1.0"
