import sys

from bench.cli import main

if __name__ == "__main__":  # spawned profile workers import this module without running it
    sys.exit(main())
