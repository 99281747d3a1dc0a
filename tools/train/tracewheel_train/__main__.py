"""``python -m tracewheel_train``: what ``accelerate launch -m tracewheel_train`` runs."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="train")
