"""``python -m flywheel_tools.train``: what ``accelerate launch -m flywheel_tools.train`` runs."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="train")
