"""`python -m llmbatch.cli ...`: the same as the `llmbatch` command."""

from . import entrypoint

if __name__ == "__main__":
    entrypoint()
