"""Writes a run's outputs: per-episode JSON and CSV, a markdown summary and a success@k-vs-length plot.

Every file is replaced atomically (written to a temporary file in the same folder, then
``os.replace``), and the harness rewrites them after each finished cell: an interrupted run leaves
complete, readable files holding every finished cell, never a half-written one. The per-episode files
are gzipped: the committed results hold about 14,000 episodes, 6 MB as plain JSON and 0.45 MB gzipped.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from qrag_benchmarks.results_io import write_atomic, write_json
from qrag_gym.data.niah import VARIANTS as NIAH_VARIANTS
from qrag_gym.evaluation import group_summaries
from qrag_gym.metrics import wilson_interval
from qrag_gym.tasks import short_name, task_family

EPISODES_JSON, EPISODES_CSV, SUMMARY_MD, PLOT_PNG, RUN_JSON = (
    "episodes.json.gz", "episodes.csv.gz", "summary.md", "success_vs_length.png", "run.json")
GENERATED_SUFFIX = "-GENERATED-DATA"
"""Added to the table's and plot's file names when any episode came from generated stories or
synthetic noise (no data folder): such numbers must never pass for benchmark results."""


def is_generated(records: Sequence[dict[str, Any]]) -> bool:
    """True when any record's document was generated rather than real bAbI text and books."""
    return any("generated" in str(r.get("source")) or "synthetic" in str(r.get("source")) for r in records)


def output_names(records: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The table and plot file names for these records (labelled when the data was generated)."""
    if not is_generated(records):
        return SUMMARY_MD, PLOT_PNG
    return (SUMMARY_MD.replace(".md", f"{GENERATED_SUFFIX}.md"), PLOT_PNG.replace(".png", f"{GENERATED_SUFFIX}.png"))
SUMMARY_METRICS = (("success_at_k", "success@k"), ("success_at_t", "success@T"), ("answer_correct", "answer accuracy"),
                   ("f1", "F1"), ("num_kept", "chunks kept"), ("seconds", "seconds per episode"))
RATES = frozenset({"success_at_k", "success_at_t", "answer_correct"})
"""Metrics shown with their Wilson 95% interval (per-episode values in [0, 1])."""


def write_gzip(path: Path, text: str) -> None:
    """Gzip with a fixed timestamp, so the same records always give the same bytes."""
    write_atomic(path, gzip.compress(text.encode(), mtime=0))


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Per-episode records as gzipped JSON, one record per line."""
    write_gzip(path, "[\n" + ",\n".join(json.dumps(record) for record in records) + "\n]\n")


def episodes_csv(records: Sequence[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def cell_means(records: Iterable[dict[str, Any]], metric: str) -> dict[tuple[str, str, str], tuple[float, int]]:
    """(agent, task, length) -> (mean of ``metric`` over its episodes, episode count), from the runner's own
    :func:`qrag_gym.evaluation.group_summaries`; cells without the metric (HotpotQA's answer) are absent."""
    return {(s["agent"], s["task"], s["length"]): (s[metric], s["episodes"])
            for s in group_summaries(list(records)) if metric in s}


def rate_text(mean: float, count: int) -> str:
    """A success rate with its Wilson 95% interval: ``0.59 [0.49, 0.68]``."""
    low, high = wilson_interval(mean * count, count)
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


FAMILY_TITLES = {"babilong": "BABILong", "niah": "RULER NIAH", "hotpotqa": "HotpotQA"}
PLOT_COLUMNS = 5


def _family(task: str) -> str:
    """The task's family for grouping (:func:`qrag_gym.tasks.task_family`; a name it does not know, from
    a user's own records, groups by itself)."""
    try:
        return task_family(task)
    except ValueError:
        return task


def _task_order(task: str) -> tuple[int, int, str]:
    """Families in :data:`FAMILY_TITLES` order; NIAH variants in RULER's order (single, multikey, ...)."""
    family = _family(task)
    rank = list(FAMILY_TITLES).index(family) if family in FAMILY_TITLES else len(FAMILY_TITLES)
    variants = list(NIAH_VARIANTS)
    return (rank, variants.index(_column(task)) if family == "niah" and _column(task) in variants else -1, task)


def _column(task: str) -> str:
    return short_name(task)


def _orders(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """Agents in first-seen order, tasks by family (bAbI, NIAH, HotpotQA) then name, lengths by token
    count (a natural length, ``context_tokens`` ``None``, last)."""
    agents = list(dict.fromkeys(r["agent"] for r in records))
    tasks = sorted({r["task"] for r in records}, key=_task_order)
    tokens = {r["length"]: r["context_tokens"] for r in records}
    return agents, tasks, sorted(tokens, key=lambda n: (tokens[n] is None, tokens[n] or 0))


def _families(tasks: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(family, its tasks) in order."""
    grouped: dict[str, list[str]] = {}
    for task in tasks:
        grouped.setdefault(_family(task), []).append(task)
    return list(grouped.items())


def _table(agents: Sequence[str], tasks: Sequence[str], lengths: Sequence[str],
           value: Any, present: Any) -> list[str]:
    """Markdown rows: one per agent and length with any episode (``present``), one column per task."""
    lines = ["| agent | length | " + " | ".join(map(_column, tasks)) + " |", "|---|---|" + "---|" * len(tasks)]
    for agent in agents:
        for length in lengths:
            if any(present(agent, t, length) for t in tasks):
                lines.append(f"| {agent} | {length} | " + " | ".join(value(agent, t, length) for t in tasks) + " |")
    return lines


def summary_markdown(records: Sequence[dict[str, Any]]) -> str:
    """One table per metric (and per task family when there are several): a row per agent and length,
    a column per task, cell means over all seeds; "–" where a cell has no value (HotpotQA has no
    answer metric)."""
    agents, tasks, lengths = _orders(records)
    families = _families(tasks)
    counts = cell_means(records, "success_at_k")
    splits = sorted({str(r.get("split")) for r in records})
    title = "# Benchmark summary"
    if is_generated(records):
        title += " - GENERATED stories and synthetic noise, not benchmark data (no data folder was found)"
    lines = [title, "",
             f"{len(records)} episodes on {', '.join(sorted({r['source'] for r in records}))} (splits: "
             f"{', '.join(splits)}); each cell is the mean over its episodes (n in the last table), success "
             "rates with their Wilson 95% interval in brackets. Every episode ran to the step budget T; "
             "precision/recall/F1 and the answer read the chunks the agent kept (Q-RAG: before its "
             "Q-threshold stop; the baselines: all T picks; the oracle: the supporting facts).", ""]
    if any(r["task"] == "qa4" and r.get("split") == "test" for r in records):
        lines += ["qa4 on the test split: bAbI's own qa4 test file repeats most of its questions from the training "
                  "file (741 of 1,000, same facts and question; `python -m qrag_benchmarks.studies.babi_overlap`), "
                  "so a qa4 score partly measures recall of training questions.", ""]
    headed = len(families) > 1 or families[0][0] != "babilong"
    if headed:
        lines += ["Answer scores: BABILong, the exact bAbI reader on the kept chunks; NIAH, RULER string match of "
                  "the gold values in the kept chunks' text; HotpotQA, none (it needs an LLM reader). HotpotQA has "
                  "one natural length, shown as `doc`.", ""]

    def sections(title: str, value: Any) -> list[str]:
        out = [f"## {title}", ""]
        for family, members in families:
            if headed:
                out += [f"### {FAMILY_TITLES.get(family, family)}", ""]
            out += [*_table(agents, members, lengths, value, lambda a, t, n: (a, t, n) in counts), ""]
        return out

    for metric, title in SUMMARY_METRICS:
        means = cell_means(records, metric)
        if not means:
            continue
        digits = 3 if metric == "seconds" else 2

        def text(a: str, t: str, n: str, means=means, digits=digits, metric=metric) -> str:
            if (a, t, n) not in means:
                return "–"
            mean, count = means[(a, t, n)]
            return rate_text(mean, count) if metric in RATES else f"{mean:.{digits}f}"

        body = sections(title, text)
        if metric == "seconds":
            body[2:2] = ["Time in the agent and env steps. It includes encoding whatever the embedder's caches (in "
                         "memory per process, and on disk) did not hold yet, so it shows cache warmth as much as "
                         "the agent's own cost; BM25 rebuilds its index every episode.", ""]
        lines += body
    lines += sections("episodes per cell", lambda a, t, n: str(counts[(a, t, n)][1]) if (a, t, n) in counts else "–")
    return "\n".join(lines).rstrip("\n") + "\n"


def plot_png(records: Sequence[dict[str, Any]]) -> bytes:
    """success@k against context length (log scale), one panel per task, one line per agent, with
    Wilson 95% intervals as error bars.

    Panels go at most :data:`PLOT_COLUMNS` to a row, each task family starting a new row; tasks with
    one natural length (HotpotQA) have no curve and are left to the summary table.
    """
    import matplotlib  # imported here: a second of start-up that only the plot needs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents, tasks, lengths = _orders(records)
    tokens = {r["length"]: r["context_tokens"] for r in records}
    means = cell_means(records, "success_at_k")
    lengths = [n for n in lengths if tokens[n] is not None]
    tasks = [t for t in tasks if any((a, t, n) in means for a in agents for n in lengths)]
    rows: list[list[str]] = []
    for _, members in _families(tasks):
        rows += [members[i:i + PLOT_COLUMNS] for i in range(0, len(members), PLOT_COLUMNS)]
    rows = rows or [[]]
    columns = max(1, max(len(row) for row in rows))
    figure, axes = plt.subplots(len(rows), columns, figsize=(3.6 * columns, 3.4 * len(rows) + 0.6),
                                sharey=True, squeeze=False)
    styles = [(marker, line) for line in ("-", "--", ":") for marker in ("o", "s", "^", "D", "v", "x")]
    for row_axes, row in zip(axes, rows):
        for axis in row_axes[len(row):]:
            axis.set_visible(False)
    for axis, task in ((axes[r][c], task) for r, row in enumerate(rows) for c, task in enumerate(row)):
        for index, agent in enumerate(agents):
            points = [(tokens[n], *means[(agent, task, n)]) for n in lengths if (agent, task, n) in means]
            if points:  # distinct markers and dashes: agents that tie (dense vs multi-step at k=1) stay visible
                marker, line = styles[index % len(styles)]
                x, y, n = (np.array(v, dtype=float) for v in zip(*points))
                low, high = np.array([wilson_interval(m * c, int(c)) for m, c in zip(y, n)]).T
                axis.errorbar(x, y, yerr=[y - low, high - y], marker=marker, linestyle=line, markersize=5, color=f"C{index % 10}",
                              alpha=0.85, capsize=2, label=agent)
        axis.set_xscale("log")
        task_lengths = [n for n in lengths if any((a, task, n) in means for a in agents)]
        axis.set_xticks([tokens[n] for n in task_lengths], task_lengths)
        axis.minorticks_off()
        axis.set_title(task)
        axis.set_xlabel("context length (tokens)")
        axis.set_ylim(-0.03, 1.03)
        axis.grid(alpha=0.3)
    for row_axes in axes:
        row_axes[0].set_ylabel("success@k")
    if is_generated(records):
        figure.suptitle("GENERATED stories and synthetic noise - not benchmark data", color="red")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=max(1, min(len(labels), 8)), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.6 / figure.get_figheight(), 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def write_outputs(out: Path, records: Sequence[dict[str, Any]], run_info: dict[str, Any]) -> None:
    """(Re)write every output file of a run from all records so far."""
    write_records(out / EPISODES_JSON, records)
    write_gzip(out / EPISODES_CSV, episodes_csv(records))
    summary_name, plot_name = output_names(records)
    write_atomic(out / summary_name, summary_markdown(records).encode())
    write_atomic(out / plot_name, plot_png(records))
    for stale in {SUMMARY_MD, PLOT_PNG, *output_names([{"source": "generated"}])} - {summary_name, plot_name}:
        (out / stale).unlink(missing_ok=True)  # the other label's table and plot, from an earlier run here
    write_json(out / RUN_JSON, run_info)


def load_records(out: Path) -> list[dict[str, Any]]:
    """Records of an earlier run in ``out`` (for ``--resume``); empty when there is none."""
    path = out / EPISODES_JSON
    return json.loads(gzip.decompress(path.read_bytes())) if path.exists() else []


def _protocol(record: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree for two runs' episodes of one cell to be merged: split, data source, settings."""
    return (record.get("split"), record.get("source"), record.get("settings_id"))


def merge_runs(out: Path, runs: Sequence[Path]) -> int:
    """Combine the records of runs made in parallel (e.g. cheap baselines and SB3 agents) into ``out``.

    An episode present in several runs (same agent, task, length, seed, episode) is taken from the
    last run named. Returns the number of episodes written.
    """
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    protocol: dict[tuple[Any, ...], tuple[Any, str]] = {}
    infos = {}
    for run in runs:
        records = load_records(run)
        if not records:
            raise FileNotFoundError(f"no {EPISODES_JSON} in {run}")
        for record in records:
            cell = (record["agent"], record["task"], record["length"], record["seed"])
            seen = protocol.setdefault(cell, (_protocol(record), str(run)))
            if seen[0] != _protocol(record):
                raise ValueError(f"{run} and {seen[1]} both hold {'/'.join(map(str, cell))} under other settings "
                                 f"({seen[0]} vs {_protocol(record)}): merging them would mix one cell's episodes")
            merged[(*cell, record["episode"])] = record
        info_path = run / RUN_JSON
        info = json.loads(info_path.read_text()) if info_path.exists() else None
        if info and "merged_from" in info:  # re-merging a merged folder: keep the original runs' infos flat
            infos.update(info["merged_from"])
        else:
            infos[str(run)] = info
    write_outputs(out, list(merged.values()), {"merged_from": infos})
    return len(merged)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qrag_benchmarks.report",
                                     description="Merge benchmark runs into one set of outputs (JSON, CSV, table, plot).")
    parser.add_argument("out", type=Path, help="folder to write the merged outputs to")
    parser.add_argument("runs", type=Path, nargs="+", help=f"run folders holding {EPISODES_JSON}")
    parser.add_argument("--overwrite", action="store_true", help="replace the results already in OUT")
    args = parser.parse_args(argv)
    if not args.overwrite and ((args.out / EPISODES_JSON).exists() or (args.out / RUN_JSON).exists()):
        parser.error(f"{args.out} already holds results: pass --overwrite to replace them with the merge")
    try:
        count = merge_runs(args.out, args.runs)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"{count} episodes from {len(args.runs)} runs written to {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
