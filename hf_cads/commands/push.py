"""``hf-cads push LOCAL_DIR REPO_ID``: upload a selection folder to a Hub dataset repo."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..hub import push_saved_selection


def main(argv: Sequence[str]) -> int:
    """``hf-cads push LOCAL_DIR REPO_ID [--private] [--overwrite] [--revision R] [--create-pr] [--commit-message M]``

    Uploads a selection folder written by ``hf-cads select --local-dir`` (or
    ``hf_cads.push_selection(result, ..., local_dir=...)``) to a dataset repo. The token comes from
    ``HF_TOKEN`` or ``hf auth login``; it is never taken on the command line.
    """
    parser = argparse.ArgumentParser(prog="hf-cads push", allow_abbrev=False, description=main.__doc__)
    parser.add_argument("local_dir", help="folder written by `hf-cads select --local-dir`")
    parser.add_argument("repo_id", help="dataset repository, e.g. my-name/bbh-bm25-10pct")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--overwrite", action="store_true", help="replace configs the repository already has")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit-message", default=None)
    args = parser.parse_args(list(argv))
    commit = push_saved_selection(
        args.local_dir,
        args.repo_id,
        overwrite=args.overwrite,
        private=True if args.private else None,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
    )
    print(
        f"hf-cads push: uploaded {args.local_dir} to https://huggingface.co/datasets/{args.repo_id} "
        f"({getattr(commit, 'commit_url', commit)})",
        flush=True,
    )
    return 0
