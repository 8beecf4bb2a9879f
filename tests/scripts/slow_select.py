"""``hf-cads ARGS`` with every padded batch of model scoring slowed down by SECONDS (used by
tests/selectors/test_cache_processes.py, so that two jobs started together overlap while they score
and a signal sent after the first stored shard arrives mid-scoring).

    python tests/scripts/slow_select.py SECONDS select RECIPE --local-dir DIR [--option value ...]
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    delay = float(sys.argv[1])
    from hf_cads.commands import main as hf_cads
    from hf_cads.selectors.scoring import TokenBatcher

    pad = TokenBatcher.pad

    def slow_pad(self, token_ids, rows):
        time.sleep(delay)
        return pad(self, token_ids, rows)

    TokenBatcher.pad = slow_pad
    return hf_cads(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
