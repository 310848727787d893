"""``source="babilong"``: the official BABILong release format, supporting ids recovered, and the hub download.

The fixture is written in the release's exact format (``data/<task>/<length>.json``, one JSON array of
``{"input", "question", "target"}``) from real official bAbI test stories hidden among real book
sentences the way BABILong's builder does it: facts in order, several may share a slot, and token
concatenation leaves them glued to the sentence before (the odd samples here have spaces instead).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from qrag_gym.data.babi import BabiSample, load_babi_task
from qrag_gym.data.babilong_release import (LENGTHS, REPO_ID, UnmatchedSampleError, load_release, locate_facts,
                                            match_row, ReleaseRow, Unmatched)
from qrag_gym.data.noise import split_sentences
from qrag_gym.data_cli import main
from qrag_gym.embedding import shared_embedder
from qrag_gym.features import corpus_features
from qrag_gym.models import count_tokens, length_tokenizer

TASK, LENGTH = "qa2", "4k"
PICKS = (0, 7, 42, 130)
"""Official qa2 test questions used (indices into the test file's questions)."""


def _noise(data_dir: Path) -> list[str]:
    book = data_dir / "noise" / "gutenberg" / "carroll-alice.txt"
    return split_sentences(book.read_text(encoding="utf-8"))[100:400]


def _haystack(sample: BabiSample, sentences: list[str], rng: np.random.Generator, glue: str) -> str:
    """BABILong's insertion: fact slots drawn with replacement among the gaps, facts kept in story order."""
    slots = np.sort(rng.choice(len(sentences) + 1, size=len(sample.facts)))
    pieces: list[str] = []
    facts = iter(sample.facts)
    for gap in range(len(sentences) + 1):
        pieces.extend(next(facts) for _ in range(int((slots == gap).sum())))
        if gap < len(sentences):
            pieces.append(sentences[gap])
    return glue.join(pieces)


@pytest.fixture(scope="module")
def release(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[BabiSample]]:
    """A data folder with real bAbI files (linked) and one release file in the hub's layout."""
    root = tmp_path_factory.mktemp("release")
    (root / "babi").mkdir()
    (root / "babi" / "en-10k").symlink_to(data_dir / "babi" / "en-10k")
    tests = load_babi_task(data_dir / "babi" / "en-10k", TASK, "test")
    picks = [tests[i] for i in PICKS]
    noise, rng = _noise(data_dir), np.random.default_rng(3)
    rows = [{"input": _haystack(s, noise[40 * k: 40 * k + 40], rng, "" if k % 2 == 0 else " ").strip(),
             "question": s.question + " ", "target": s.answer} for k, s in enumerate(picks)]
    path = root / "babilong" / "data" / TASK / f"{LENGTH}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return root, picks


def test_release_env_recovers_the_gold_facts(release: tuple[Path, list[BabiSample]]) -> None:
    root, picks = release
    env = gym.make("QRAG-Babilong-v0", task=TASK, source="babilong", release_length=LENGTH, data_dir=str(root))
    check_env(env.unwrapped, skip_render_check=True)
    base = env.unwrapped
    assert base.num_questions == len(picks) and not base.release.unmatched
    for index, gold in enumerate(picks):
        _, info = env.reset(seed=index, options={"question_index": index})
        chunks = base.chunks
        assert base.episode.corpus is base.corpus and base.corpus.texts(base.episode.chunk_ids) == chunks
        assert base.corpus.texts(np.array([base.episode.question_id]))[0] == gold.question
        assert info["num_tokens"] == int(count_tokens(length_tokenizer(), list(chunks)).sum())
        assert info["supporting_ids"] == _gold_ids(chunks, gold)
        assert sorted(chunks[i] for i in info["supporting_ids"]) == sorted(gold.facts[j] for j in gold.supporting)
        assert (info["question"], info["answer"], info["source"], info["split"]) == (
            gold.question, gold.answer, "babilong-release", "test")
        assert info["release_index"] == index and info["num_tokens"] > 0
        assert len(chunks) > 40  # the book sentences are chunks too, not one blob
    env.close()


def test_a_release_file_is_one_corpus_of_distinct_sentences(data_dir: Path, tmp_path: Path) -> None:
    """Two haystacks hiding different stories among the *same* book sentences: each sentence has one id in the file's
    corpus, both episodes' ids name their own chunks, and features gathered by id are the encoder's features of the
    texts, bit for bit."""
    (tmp_path / "babi").mkdir()
    (tmp_path / "babi" / "en-10k").symlink_to(data_dir / "babi" / "en-10k")
    tests = load_babi_task(data_dir / "babi" / "en-10k", TASK, "test")
    shared, rng = _noise(data_dir)[:30], np.random.default_rng(5)
    rows = [{"input": _haystack(tests[i], shared, rng, " "), "question": tests[i].question, "target": tests[i].answer}
            for i in (3, 50)]
    path = tmp_path / "babilong" / "data" / TASK / f"{LENGTH}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    env = gym.make("QRAG-Babilong-v0", task=TASK, source="babilong", release_length=LENGTH, data_dir=str(tmp_path)).unwrapped
    episodes = []
    for index in range(2):
        env.reset(options={"question_index": index})
        episodes.append(env.episode)
    corpus = env.corpus
    sentences = corpus.tables[0]
    assert len(set(sentences.texts)) == len(sentences)  # distinct texts only
    id_of = {(text, int(i)) for episode in episodes for text, i in zip(episode.chunks, episode.chunk_ids.tolist())}
    assert len(id_of) == len({text for text, _ in id_of})  # one id per text, across the file's episodes
    both = set(episodes[0].chunks) & set(episodes[1].chunks)
    assert len(both) >= 20  # most of the shared book sentences come out as the same sentences in both haystacks
    embedder = shared_embedder("default")
    for episode in episodes:
        assert corpus.texts(episode.chunk_ids) == episode.chunks
        by_id = corpus_features(corpus, embedder).rows(episode.chunk_ids)
        assert np.array_equal(by_id, embedder.encode(list(episode.chunks)))
    env.close()


def _gold_ids(chunks: tuple[str, ...], gold: BabiSample) -> tuple[int, ...]:
    """Chunk ids of the gold story's facts, found independently: the k-th fact is the k-th chunk equal to a
    story fact, walking the chunks in order (the fixture's noise holds no bAbI sentence)."""
    fact_chunks = [i for i, c in enumerate(chunks) if c in set(gold.facts)]
    assert [chunks[i] for i in fact_chunks] == list(gold.facts)
    return tuple(sorted(fact_chunks[j] for j in gold.supporting))


def test_unlocatable_fact_is_reported_and_skipped(release: tuple[Path, list[BabiSample]], tmp_path: Path) -> None:
    root, picks = release
    rows = json.loads((root / "babilong" / "data" / TASK / f"{LENGTH}.json").read_text(encoding="utf-8"))
    dropped = picks[1].facts[-1]
    rows[1]["input"] = rows[1]["input"].replace(dropped, "", 1)
    rows[2]["question"] = "Where is the spaceship?"
    broken = tmp_path / f"{LENGTH}.json"
    broken.write_text(json.dumps(rows), encoding="utf-8")
    result = load_release(TASK, LENGTH, root, release_path=broken)
    assert [m.index for m in result.matched] == [0, 3]
    reasons = {u.index: u.reason for u in result.unmatched}
    assert set(reasons) == {1, 2}
    assert repr(dropped) in reasons[1] or "first missing" in reasons[1]
    assert "Where is the spaceship?" in reasons[2]
    assert "2 skipped" in result.summary() and "sample 1:" in result.summary()
    with pytest.raises(UnmatchedSampleError, match="sample 1"):
        load_release(TASK, LENGTH, root, release_path=broken, strict=True)


def test_matching_rule_prefers_the_whole_story_and_refuses_ties() -> None:
    a, b, c, d = "Mary went to the kitchen.", "John got the milk.", "John went to the hall.", "Mary left."
    early = BabiSample((a, b), "Where is the milk?", "kitchen", (1,), TASK, 0)
    full = BabiSample((a, b, a, c), "Where is the milk?", "hallway", (1, 3), TASK, 0)
    haystack = f"Noise one. {a} Noise two.{b}{a} Noise three. {c} End."
    assert locate_facts(haystack, full.facts)[1] == 4  # a repeated fact takes its second place
    row = ReleaseRow(haystack, "Where is the milk? ", "hallway")
    longer = BabiSample((a, b, a, c), "Where is the milk?", "hallway", (1, 3), TASK, 1)
    prefix = BabiSample((a, b), "Where is the milk?", "hallway", (1,), TASK, 2)
    assert match_row(0, row, [prefix, longer]).sample is longer
    assert match_row(0, ReleaseRow(haystack, "Where is the milk?", "kitchen"), [early]).sample is early
    rival = BabiSample((a, d), "Where is the milk?", "hallway", (0,), TASK, 3)
    tie = ReleaseRow(f"{a} x. {b} y. {d}", "Where is the milk?", "hallway")
    other = BabiSample((a, b), "Where is the milk?", "hallway", (1,), TASK, 4)
    result = match_row(5, tie, [rival, other])
    assert isinstance(result, Unmatched) and "ambiguous" in result.reason


def test_missing_release_names_the_expected_path(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("QRAG_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    (tmp_path / "babi").mkdir()
    (tmp_path / "babi" / "en-10k").symlink_to(data_dir / "babi" / "en-10k")
    with pytest.raises(FileNotFoundError) as err:
        gym.make("QRAG-Babilong-v0", task="qa1", source="babilong", release_length="8k", data_dir=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "babilong" / "data" / "qa1" / "8k.json") in message
    assert "qrag-data fetch babilong --lengths 8k" in message


@pytest.mark.parametrize("kwargs, needle", [
    ({"context_tokens": 4000}, "context_tokens does not apply"),
    ({"num_sentences": 160}, "num_sentences does not apply"),
    ({"split": "train"}, "split='test'"),
    ({"release_length": "3k"}, "0k, 1k, 2k"),
])
def test_release_rejects_settings_that_do_not_apply(release, kwargs, needle) -> None:
    root, _ = release
    args = {"task": TASK, "source": "babilong", "release_length": LENGTH, "data_dir": str(root), **kwargs}
    with pytest.raises(ValueError, match=needle):
        gym.make("QRAG-Babilong-v0", **args)


def test_release_length_needs_the_release_source(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="release_length='4k' only applies to source='babilong'"):
        gym.make("QRAG-Babilong-v0", task="qa1", source="real", release_length="4k", data_dir=str(data_dir))


# ----- download through huggingface_hub against a local stand-in for the hub ------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(BaseHTTPRequestHandler):
    """The three hub routes snapshot_download uses: repo info, the recursive tree, and resolve (HEAD/GET)."""

    files: dict[str, bytes] = {}
    requested: list[str] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        return None

    def _send(self, body: bytes, kind: str = "application/json", extra: dict[str, str] | None = None,
              head: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        path = urlparse(self.path).path
        self.requested.append(path)
        api = f"/api/datasets/{REPO_ID}"
        if path in (f"{api}/revision/main", f"{api}/revision/{COMMIT}"):
            return self._send(json.dumps({"id": REPO_ID, "sha": COMMIT, "private": False}).encode(), head=head)
        if path == f"{api}/tree/{COMMIT}":
            tree = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in self.files.items()]
            return self._send(json.dumps(tree).encode(), head=head)
        prefix = f"/datasets/{REPO_ID}/resolve/{COMMIT}/"
        if path.startswith(prefix) and path[len(prefix):] in self.files:
            data = self.files[path[len(prefix):]]
            return self._send(data, "application/octet-stream",
                              {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": COMMIT}, head=head)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)


@pytest.fixture
def local_hub(release, monkeypatch):
    """A local server answering as the hub, with HF_HUB_OFFLINE lifted for this test only."""
    import huggingface_hub.constants

    root, _ = release
    shipped = (root / "babilong" / "data" / TASK / f"{LENGTH}.json").read_bytes()
    _Hub.files = {"README.md": b"---\nconfigs: []\n---\n", f"data/{TASK}/{LENGTH}.json": shipped,
                  f"data/{TASK}/32k.json": b"[]", "data/qa7/4k.json": b"[]"}
    _Hub.requested = []
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", shipped
    server.shutdown()
    server.server_close()


def test_fetch_babilong_downloads_the_asked_files_through_the_hub_client(local_hub, tmp_path, monkeypatch, capsys):
    url, shipped = local_hub
    monkeypatch.setenv("HF_ENDPOINT", url)
    target = tmp_path / "data"
    assert main(["fetch", "babilong", "--lengths", LENGTH, "64k", "--to", str(target), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert (target / "babilong" / "data" / TASK / f"{LENGTH}.json").read_bytes() == shipped
    assert not (target / "babilong" / "data" / TASK / "32k.json").exists()  # not asked for
    assert not (target / "babilong" / "data" / "qa7").exists()
    assert "not in the release at that commit" in out and f"{TASK}/64k.json" in out
    lock = json.loads((target / "qrag-data.lock.json").read_text())["sources"]["babilong"]
    assert lock["commit"] == COMMIT and lock["url"] == url
    assert lock["files"] == {f"babilong/data/{TASK}/{LENGTH}.json": hashlib.sha256(shipped).hexdigest()}
    assert any(p.startswith(f"/datasets/{REPO_ID}/resolve/{COMMIT}/data/{TASK}/") for p in _Hub.requested)
    assert main(["check", "--data-dir", str(target)]) == 1  # bAbI, books, HotpotQA absent there
    report = capsys.readouterr().out
    assert f"{TASK}: {LENGTH} (" in report and "qa1: no lengths" in report
    # fetching again keeps what it installed; a file the user changed is refused unless --overwrite
    assert main(["fetch", "babilong", "--lengths", LENGTH, "--to", str(target), "--quiet"]) == 0
    mine = target / "babilong" / "data" / TASK / f"{LENGTH}.json"
    mine.write_text("[]")
    assert main(["fetch", "babilong", "--lengths", LENGTH, "--to", str(target), "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err and mine.read_text() == "[]"
    assert main(["fetch", "babilong", "--lengths", LENGTH, "--to", str(target), "--quiet", "--overwrite"]) == 0
    assert mine.read_bytes() == shipped


def test_fetch_babilong_refuses_offline_mode_and_unknown_lengths(tmp_path, monkeypatch, capsys) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["fetch", "babilong", "--lengths", "4k", "--to", str(tmp_path), "--quiet"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fetch", "babilong", "--lengths", "5k", "--to", str(tmp_path)])
    assert "0k 1k 2k 4k" in capsys.readouterr().err
    assert LENGTHS[-1] == "1M"
