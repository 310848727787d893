"""``qrag-data``: download the public data the envs read, and check what is there.

    qrag-data fetch all                    # bAbI, books, HotpotQA into $QRAG_DATA_DIR or the user data folder
    qrag-data fetch babi --to ~/data       # one source into a chosen folder
    qrag-data fetch babilong --lengths 0k 4k 32k   # the official BABILong release (Hugging Face Hub)
    qrag-data check                        # what the envs will find; exit 1 if something they need is missing

Imports of the fetching code are deferred so that ``qrag-data --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SOURCE_NAMES = ("babi", "books", "hotpotqa")
"""What ``fetch all`` installs: what the default envs read."""
RELEASE_NAME = "babilong"
"""The BABILong release: fetched only when named (several GB at every length), with ``--lengths``."""
DESCRIPTION = "Download the public data the qrag-gym envs read (fetch), and check what is there (check)."

FETCH_EPILOG = """\
sources:
  babi      bAbI v1.2 tasks, en-10k qa1-qa5 train and test -> DIR/babi/en-10k/ (CC BY 3.0)
  books     NLTK's Project Gutenberg selection -> DIR/noise/gutenberg/*.txt (public domain)
  hotpotqa  HotpotQA distractor dev set -> DIR/hotpotqa/hotpot_dev_distractor_v1.jsonl (CC BY-SA 4.0)
  babilong  the official BABILong release (Hugging Face dataset RMT-team/babilong), qa1-qa5 at --lengths
            -> DIR/babilong/data/<task>/<length>.json, for QRAG-Babilong-v0 source="babilong"
            (not part of "all"; honours HF_ENDPOINT; the commit and file SHA-256s go to the lock file)

checksums: bAbI and HotpotQA are checked against published SHA-256 values; books against the MD5
and size nltk_data publishes, and its SHA-256 is recorded at the first download in
DIR/qrag-data.lock.json (trust on first use) and checked on later downloads.
Set QRAG_DATA_MIRROR=URL to fetch every archive from URL/<archive name> instead.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrag-data", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download, verify and unpack public data sources",
                           epilog=FETCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch.add_argument("sources", nargs="+", choices=(*SOURCE_NAMES, RELEASE_NAME, "all"), metavar="SOURCE",
                       help="babi, books, hotpotqa, babilong or all (all = babi, books, hotpotqa)")
    fetch.add_argument("--to", metavar="DIR", default=None,
                       help="data folder to install into (default: $QRAG_DATA_DIR, else the user data folder)")
    fetch.add_argument("--url", default=None, help="download this URL instead (one source only)")
    fetch.add_argument("--sha256", default=None, metavar="HEX",
                       help="expected SHA-256 of the downloaded archive instead of the known one (one source only)")
    fetch.add_argument("--overwrite", action="store_true",
                       help="replace existing files that differ from what would be installed")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.add_argument("--lengths", nargs="+", metavar="LENGTH", default=None,
                       help="babilong only: release lengths (0k 1k 2k 4k 8k 16k 32k 64k 128k 256k 512k 1M); "
                            "default 0k..32k")
    check = sub.add_parser("check", help="say per source what is present and missing (exit 1 if the envs lack something)")
    check.add_argument("--data-dir", metavar="DIR", default=None,
                       help="check this folder only (default: the folders the envs search)")
    return parser


def _fetch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from qrag_gym.data.download import DataFetchError
    from qrag_gym.data.fetch import default_fetch_dir, fetch_source
    from qrag_gym.data.paths import DATA_ENV_VAR, candidate_data_dirs

    from qrag_gym.data.babilong_release import LENGTHS

    names = list(dict.fromkeys(
        name for source in args.sources for name in (SOURCE_NAMES if source == "all" else (source,))))
    if args.lengths and RELEASE_NAME not in names:
        parser.error("--lengths applies to the babilong source only")
    bad = [length for length in args.lengths or () if length not in LENGTHS]
    if bad:
        parser.error(f"--lengths: unknown {', '.join(bad)}; the release has {' '.join(LENGTHS)}")
    if (args.url or args.sha256) and RELEASE_NAME in names:
        parser.error("--url and --sha256 do not apply to babilong (it comes from the Hugging Face Hub; set HF_ENDPOINT "
                     "for a mirror)")
    if (args.url or args.sha256) and len(names) != 1:
        parser.error("--url and --sha256 apply to one source: name exactly one of babi, books, hotpotqa")
    if args.sha256 and (len(args.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in args.sha256)):
        parser.error(f"--sha256 {args.sha256!r} is not 64 hex digits")
    root = os.path.expanduser(args.to) if args.to else str(default_fetch_dir())
    failed = 0
    for name in names:
        try:
            if name == RELEASE_NAME:
                from qrag_gym.data.babilong_fetch import fetch_babilong

                fetch_babilong(Path(root), args.lengths, progress=not args.quiet, overwrite=args.overwrite)
                continue
            fetch_source(name, root, url=args.url, sha256=args.sha256, overwrite=args.overwrite,
                         progress=not args.quiet)
        except DataFetchError as err:
            print(f"qrag-data: {name}: {err}", file=sys.stderr)
            failed += 1
        except OSError as err:  # disk full, no permission: say which file, not a traceback
            print(f"qrag-data: {name}: cannot write under {root}: {err}", file=sys.stderr)
            failed += 1
        except KeyboardInterrupt:
            print(f"\nqrag-data: interrupted; any partial download is kept under {root}: run the same "
                  f"command again to resume", file=sys.stderr)
            return 130
    searched = {os.path.realpath(path) for _, path in candidate_data_dirs()}
    if not failed and os.path.realpath(root) not in searched:
        print(f"note: the envs do not search {root}; set {DATA_ENV_VAR}={root} or pass data_dir=...")
    return 1 if failed else 0


def _check(args: argparse.Namespace) -> int:
    from qrag_gym.data.check import check_all, format_report

    if args.data_dir is not None and not os.path.isdir(os.path.expanduser(args.data_dir)):
        print(f"qrag-data: --data-dir {args.data_dir} does not exist or is not a folder", file=sys.stderr)
        return 1
    checks = check_all(args.data_dir)
    print(format_report(checks, args.data_dir))
    return 0 if all(c.ok or c.optional for c in checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return _fetch(args, parser)
    return _check(args)


if __name__ == "__main__":
    sys.exit(main())
