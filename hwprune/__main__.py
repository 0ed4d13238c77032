"""``python -m hwprune``: the command-line interface (also under ``torchrun -m hwprune``)."""

from hwprune.cli import main

if __name__ == "__main__":
    main()
