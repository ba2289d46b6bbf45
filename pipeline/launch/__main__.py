"""``python -m pipeline.launch SPEC [...]``: see :mod:`pipeline.launch.cli`."""

from pipeline.launch.cli import entry

if __name__ == "__main__":
    entry()
