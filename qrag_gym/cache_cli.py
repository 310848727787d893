"""``qrag-cache``: inspect, pre-fill or clear the on-disk embedding cache."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from qrag_gym.cache import CacheClearRefused, clear_all, default_cache_root

WARM_BATCH = 2048


def warm(model: str | None, data_dir: str | None) -> int:
    """Encode every book sentence and bAbI statement (train and test files) of the data folder once, persisting as it goes."""
    from qrag_gym.data.babi import TASKS, load_babi_task, task_path
    from qrag_gym.data.noise import load_book_corpus
    from qrag_gym.data.paths import require_data_subdir
    from qrag_gym.embedding import TextEmbedder

    texts = set(load_book_corpus(require_data_subdir("noise/gutenberg", data_dir), "all").sentences)
    babi_dir = require_data_subdir("babi/en-10k", data_dir)
    for task, part in ((task, part) for task in TASKS for part in ("train", "test")):
        if task_path(babi_dir, task, part).is_file():  # the official test stories, where present
            texts.update(f for s in load_babi_task(babi_dir, task, part) for f in s.facts)
    embedder = TextEmbedder(model)
    assert embedder.disk is not None
    todo = sorted(t for t, hit in zip(texts, embedder.disk.lookup(list(texts))[0]) if not hit)
    todo.sort(key=len)
    for start in tqdm(range(0, len(todo), WARM_BATCH), desc="encoding", unit="batch"):
        embedder.encode(todo[start : start + WARM_BATCH])
        embedder.disk.flush()  # persist each batch: an interrupted warm-up keeps its progress
    return len(todo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qrag-cache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print where the cache lives and its size")
    sub.add_parser("clear", help="delete every cached vector of every model (only in a folder the cache marked)")
    warm_parser = sub.add_parser("warm", help="encode all book and bAbI sentences of the data folder once")
    warm_parser.add_argument("--model", default=None, help="HF model id or path (default all-MiniLM-L6-v2)")
    warm_parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    root = default_cache_root()
    if args.command == "info":
        files = list(root.rglob("*.npz")) if root.is_dir() else []
        print(f"{root}: {len(files)} shards, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB")
    elif args.command == "clear":
        try:
            folder, removed = clear_all(root)
        except CacheClearRefused as err:
            parser.exit(2, f"qrag-cache clear: {err}\n")
        print(f"removed {removed} shard files from {folder}")
    else:
        print(f"encoded {warm(args.model, args.data_dir)} new texts into {root}")


if __name__ == "__main__":
    main()
