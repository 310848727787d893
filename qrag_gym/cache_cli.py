"""``qrag-cache``: inspect, pre-fill or clear the on-disk embedding cache.

``qrag-cache warm --ray [ADDRESS]`` encodes on Ray Data actors (:mod:`qrag_gym.integrations.ray_embedding`)
and writes the same cache, with the same vectors (README, "Scaling out with Ray")."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from qrag_gym.cache import CacheClearRefused, clear_all, default_cache_root

WARM_BATCH = 2048
"""Texts per persisted block: a whole number of the encoder's 128-text forward batches, so the blocks cut the
length-sorted texts into the same batches as the Ray path (:func:`qrag_gym.integrations.ray_embedding.forward_batches`)."""


def warm(model: str | None, data_dir: str | None, ray: str | None = None, ray_workers: int | None = None,
         ray_gpus: float = 0.0) -> int:
    """Encode every book sentence and bAbI statement (train and test files) of the data folder once, persisting as it goes.

    With ``ray`` (:data:`qrag_gym.integrations.ray_cluster.LOCAL` or a cluster address) the encoding runs on
    a pool of ``ray_workers`` Ray Data actors (default: one per CPU of the cluster), each with ``ray_gpus``
    GPUs; the vectors are the local path's (:mod:`qrag_gym.integrations.ray_embedding`).
    """
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
    todo.sort(key=len)  # length-sorted blocks of whole forward batches: the batches Ray's path cuts too
    if ray is not None:
        from qrag_gym.integrations.ray_cluster import LOCAL, init_ray
        from qrag_gym.integrations.ray_embedding import embed_on_ray

        session = init_ray(ray, ray_workers if ray == LOCAL else None)
        workers = ray_workers or max(1, int(session.cluster_resources().get("CPU", 1)))
        return embed_on_ray(embedder, todo, workers, ray_gpus)
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
    warm_parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                             help="encode on Ray Data actors (pip install \"qrag-gym[ray]\"): alone, a Ray instance "
                                  "started here; with an address (auto, ray://HOST:10001), that cluster")
    warm_parser.add_argument("--ray-workers", type=int, default=None, metavar="N",
                             help="with --ray: N encoder actors (a local instance gets N CPUs); default one per CPU")
    warm_parser.add_argument("--ray-gpus", type=float, default=0.0, metavar="G",
                             help="with --ray: GPUs per actor (1 encodes on CUDA: vectors close to, not bit-identical "
                                  "with, a CPU run's)")
    args = parser.parse_args(argv)
    if args.command == "warm":
        if args.ray is None and (args.ray_workers is not None or args.ray_gpus):
            parser.error("--ray-workers and --ray-gpus size a --ray run: give --ray too")
        if args.ray_workers is not None and args.ray_workers < 1:
            parser.error(f"--ray-workers must be at least 1, got {args.ray_workers}")
        if args.ray_gpus < 0:
            parser.error(f"--ray-gpus must be non-negative, got {args.ray_gpus}")
    root = default_cache_root()
    if args.command == "info":
        shards = list(root.rglob("shard-*.npz")) if root.is_dir() else []
        tables = list(root.rglob("table-*.npy")) if root.is_dir() else []
        used = sum(f.stat().st_blocks * 512 for f in tables)  # sparse files: the blocks written, not the length
        print(f"{root}: {len(shards)} shards, {sum(f.stat().st_size for f in shards) / 2**20:.1f} MiB; "
              f"{len(tables)} feature tables, {used / 2**20:.1f} MiB on disk")
    elif args.command == "clear":
        try:
            folder, removed = clear_all(root)
        except CacheClearRefused as err:
            parser.exit(2, f"qrag-cache clear: {err}\n")
        print(f"removed {removed} shard files from {folder}")
    else:
        print(f"encoded {warm(args.model, args.data_dir, args.ray, args.ray_workers, args.ray_gpus)} new texts into {root}")


if __name__ == "__main__":
    main()
