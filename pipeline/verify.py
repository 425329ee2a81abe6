"""`python -m pipeline.verify OUT`: re-read a shard folder and report every problem.

The checks live with the writer they hold to account, in `pipeline.shard.verify`.
"""

import sys

from pipeline.shard.verify import build_parser, main

__all__ = ["build_parser", "main"]  # the command's parser and entry point

if __name__ == "__main__":
    sys.exit(main())
