"""``python -m experiments NAME [--out DIR] [--set key=value ...]``."""
import sys

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]], prog="python -m experiments"))
