"""tracewheel: the library every tool of the tracing-feedback toolkit imports.

Modules, by what they hold:

- ``records``   the record contracts (task, rollout, sample) with validation
- ``jsonl``     streaming JSONL reader with line numbers, atomic writer, stdout kept for records
- ``cli``       click options and behaviour every tool shares, the summary line, progress
- ``config``    ``--config`` YAML files (including the seed's ``astuner`` section)
- ``client``    OpenAI-compatible endpoints: settings, retries, bounded concurrency, lazy
                embedded serving
- ``judge``     the LLM judge (trace-filter's filter, rollout's judge reward)
- ``answers``   ``\\boxed{}`` answers: extraction, normalisation, comparison
- ``cache``     a persistent SQLite cache for results that cost an LLM call
- ``dedup``     exact and near-duplicate detection of task texts
- ``workflow``  the workflow contract (Handle, Result) and loading workflows
- ``sandbox``   running model-written code in a limited child process
- ``models``    model resolution, the embedded SmolLM2 model
- ``vllm``      the vLLM server launcher
- ``ids``       stable ids
- ``errors``    the one error type every tool reports as a one-line message
- ``extras``    which install extra brings a missing package
- ``ask``       asking a model for one JSON object (the judge, rubrics, task-augment)
- ``messages``  chat message content as text; when two messages are the same
- ``chat_template`` rendering a chat template on this side of the server
- ``split``     the held-out split (``python -m tracewheel.split``)
- ``evalset``   an evaluation set checked disjoint from training (``python -m tracewheel.evalset``)
- ``report``    the report of a ``make flywheel`` run (``python -m tracewheel.report``)
"""

__version__ = "0.1.0"
