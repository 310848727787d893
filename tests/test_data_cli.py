"""``qrag-data``: fetch from a local HTTP server (real archive formats, small contents), verify, resume,
refuse to overwrite, and ``check``. No network beyond 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qrag_gym.data import sources as sources_module
from qrag_gym.data.babi import TASK_FILES, TASKS, load_babi_task
from qrag_gym.data.fetch import DOWNLOADS_DIR, LOCK_FILE, TOFU, fetch_source
from qrag_gym.data.download import ChecksumError
from qrag_gym.data.hotpotqa import load_hotpotqa
from qrag_gym.data.noise import load_book_corpus
from qrag_gym.data.sources import strip_gutenberg_boilerplate
from qrag_gym.data_cli import main

# ---------------------------------------------------------------- fixture archives, in the real formats

STORY = (
    "1 Mary moved to the bathroom.\n"
    "2 John went to the hallway.\n"
    "3 Where is Mary? \tbathroom\t1\n"
    "4 Daniel went back to the hallway.\n"
    "5 Sandra journeyed to the garden.\n"
    "6 Where is Daniel? \thallway\t4\n"
    "1 Sandra travelled to the office.\n"
    "2 Sandra went to the bathroom.\n"
    "3 Where is Sandra? \tbathroom\t2\n"
)


def babi_archive() -> bytes:
    """``tasks_1-20_v1-2.tar.gz`` layout: en-10k train+test per task, licence, readme, and an ``en/``
    copy that must not be picked up."""
    members = {"tasks_1-20_v1-2/LICENSE.txt": b"CC License\n\nbAbI tasks data\n",
               "tasks_1-20_v1-2/README.txt": b"Towards AI Complete Question Answering\n"}
    for task, train in TASK_FILES.items():
        test = train.replace("_train.txt", "_test.txt")
        members[f"tasks_1-20_v1-2/en-10k/{train}"] = (STORY + f"1 The {task} kitchen is north.\n2 Where is the kitchen? \tnorth\t1\n").encode()
        members[f"tasks_1-20_v1-2/en-10k/{test}"] = STORY.encode()
        members[f"tasks_1-20_v1-2/en/{train}"] = b"1 from the 1k folder.\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


PG_HEADER = b"The Project Gutenberg EBook of Parables, by Nobody\n\n*** START OF THIS PROJECT GUTENBERG EBOOK PARABLES ***\n\n"
PG_FOOTER = b"\n\nEnd of the Project Gutenberg EBook of Parables\n\n*** END OF THIS PROJECT GUTENBERG EBOOK PARABLES ***\nLicence text.\n"
BOOKS = {
    f"author{i}-book.txt": f"[Book {i} by Author {i} 1850]\n\nThe quiet river ran past the mill for {i} long years. "
    f"Nobody in the village remembered when it had started.\n".encode()
    for i in range(5)
}
BOOKS["parables.txt"] = PG_HEADER + b"A sower went out to sow his seed in the field. Some fell by the way side.\n" + PG_FOOTER


def books_archive(books: dict[str, bytes] = BOOKS) -> bytes:
    """NLTK's ``gutenberg.zip`` layout: ``gutenberg/<name>.txt`` plus ``gutenberg/README``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("gutenberg/", b"")
        bundle.writestr("gutenberg/README", b"Project Gutenberg Selections\n")
        for name, data in books.items():
            bundle.writestr(f"gutenberg/{name}", data)
    return buffer.getvalue()


def hotpot_records() -> list[dict]:
    """Records in the official ``hotpot_dev_distractor_v1.json`` schema."""
    return [
        {"_id": f"5a8b57f25542995d1e6f13{i:02d}", "answer": answer, "question": question, "type": "bridge",
         "level": "hard", "supporting_facts": [[a, 0], [b, 0]],
         "context": [[a, [f"{a} is a place.", " It is old."]], ["Elsewhere", ["Elsewhere is far."]], [b, [f"{b} is near {a}."]]]}
        for i, (question, answer, a, b) in enumerate([
            ("Which town is near Ashford?", "Bexley", "Ashford", "Bexley"),
            ("Where is the old mill?", "Crayford", "Crayford", "Dartford"),
            ("What river runs through Erith?", "Thames", "Erith", "Thames"),
        ])
    ]


def hotpot_archive() -> bytes:
    return json.dumps(hotpot_records()).encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- a Range-capable local server


class State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.cut_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        self.body_bytes = 0


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: State = self.server.state  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        state.requests.append((name, self.headers.get("Range")))
        data = state.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and state.honour_range:
            start = int(wanted.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in state.cut_once:  # the connection drops half-way, as on a flaky link
            state.cut_once.discard(name)
            body = body[: len(body) // 2]
        self.wfile.write(body)
        state.body_bytes += len(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    """Serves ``state.files`` on 127.0.0.1 and points ``QRAG_DATA_MIRROR`` at it."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = State()  # type: ignore[attr-defined]
    httpd.state.files = {"tasks_1-20_v1-2.tar.gz": babi_archive(), "gutenberg.zip": books_archive(),
                         "hotpot_dev_distractor_v1.json": hotpot_archive()}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("QRAG_DATA_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}/")
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


def fetch(state: State, name: str, to: Path, *extra: str) -> int:
    """``qrag-data fetch NAME --to TO --sha256 <digest of what the server holds now>``."""
    archive = sources_module.SOURCES[name].filename
    return main(["fetch", name, "--to", str(to), "--sha256", sha(state.files[archive]), "--quiet", *extra])


def leftovers(root: Path) -> list[str]:
    """Anything of the tool's own working files left behind (downloads, .part, staging)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if DOWNLOADS_DIR in p.parts or p.name.endswith(".part") or p.name.startswith(".qrag-data-staging"))


# ---------------------------------------------------------------- tests


def test_fetch_installs_the_layout_the_loaders_and_envs_read(server: State, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    (root / "noise" / "gutenberg").mkdir(parents=True)
    own_book = root / "noise" / "gutenberg" / "zz-my-own.txt"
    own_book.write_text("My own book. It is not from the archive.\n")
    for name in ("babi", "books", "hotpotqa"):
        assert fetch(server, name, root) == 0, capsys.readouterr().err

    babi = root / "babi" / "en-10k"
    for task in TASKS:
        samples = load_babi_task(babi, task)
        assert [s.answer for s in samples] == ["bathroom", "hallway", "bathroom", "north"]
        assert samples[1].facts[samples[1].supporting[0]] == "Daniel went back to the hallway."
        assert (babi / TASK_FILES[task].replace("_train", "_test")).read_text() == STORY
    assert (root / "babi" / "LICENSE.txt").read_text().startswith("CC License")
    assert "from the 1k folder" not in "".join(p.read_text() for p in babi.iterdir())

    corpus = load_book_corpus(root / "noise" / "gutenberg")
    assert corpus.book_names == ("author0-book", "author1-book", "author2-book", "author3-book", "author4-book",
                                 "parables", "zz-my-own")
    parables = (root / "noise" / "gutenberg" / "parables.txt").read_text()
    assert parables.startswith("A sower went out") and "Gutenberg" not in parables
    assert (root / "noise" / "gutenberg" / "author0-book.txt").read_bytes() == BOOKS["author0-book.txt"]
    assert own_book.read_text() == "My own book. It is not from the archive.\n"

    from qrag_gym.envs.babilong import load_source
    from qrag_gym.envs.hotpotqa import resolve_hotpotqa_file

    source = load_source("qa2", "train", "real", root)  # the BABILong env's own resolution
    assert source.label == "babi-real+gutenberg"
    assert [s.answer for s in source.samples] == ["bathroom", "north"]  # story 0 is a validation story
    path = resolve_hotpotqa_file(None, root)  # the HotpotQA env's default file
    assert path == root / "hotpotqa" / "hotpot_dev_distractor_v1.jsonl"
    questions = load_hotpotqa(path)
    assert [q.answers for q in questions] == [("Bexley",), ("Crayford",), ("Thames",)]
    assert [q.supporting for q in questions] == [(0, 2), (0, 2), (0, 2)]

    lock = json.loads((root / LOCK_FILE).read_text())
    assert set(lock["sources"]) == {"babi", "books", "hotpotqa"}
    assert "noise/gutenberg/zz-my-own.txt" not in lock["sources"]["books"]["files"]
    assert leftovers(root) == []
    capsys.readouterr()
    assert main(["check", "--data-dir", str(root)]) == 0
    assert "3 questions" in capsys.readouterr().out

    before = len(server.requests)
    assert fetch(server, "babi", root) == 0  # intact: nothing is downloaded again
    assert len(server.requests) == before
    assert "already present" in capsys.readouterr().out


def test_the_published_checksum_rejects_another_file(server: State, tmp_path: Path, capsys) -> None:
    """Without --sha256 the pinned SHA-256 and size apply: the small fixture is not the real archive."""
    root = tmp_path / "data"
    assert main(["fetch", "babi", "--to", str(root), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "does not match" in err and "0364ebde659f" in err and "huggingface/datasets" in err
    assert not (root / "babi").exists() and leftovers(root) == []


def test_a_corrupted_download_fails_the_checksum_and_installs_nothing(server: State, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    good = server.files["gutenberg.zip"]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    server.files["gutenberg.zip"] = bytes(bad)
    assert main(["fetch", "books", "--to", str(root), "--sha256", sha(good), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"expected {sha(good)}" in err and "nothing was installed" in err
    assert not (root / "noise").exists() and leftovers(root) == [] and not (root / LOCK_FILE).exists()


def test_an_interrupted_download_resumes_where_it_stopped(server: State, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    name = "hotpot_dev_distractor_v1.json"
    data = server.files[name]
    server.cut_once.add(name)
    assert fetch(server, "hotpotqa", root) == 1
    assert "run the same command again to resume" in capsys.readouterr().err
    part = root / DOWNLOADS_DIR / f"{name}.part"
    assert part.stat().st_size == len(data) // 2
    assert not (root / "hotpotqa").exists()

    server.body_bytes = 0
    assert fetch(server, "hotpotqa", root) == 0
    assert server.requests[-1] == (name, f"bytes={len(data) // 2}-")
    assert server.body_bytes == len(data) - len(data) // 2  # only the rest travelled
    assert len(load_hotpotqa(root / "hotpotqa" / "hotpot_dev_distractor_v1.jsonl")) == 3
    assert leftovers(root) == []


def test_a_half_written_part_is_resumed_with_range(server: State, tmp_path: Path) -> None:
    root = tmp_path / "data"
    name = "tasks_1-20_v1-2.tar.gz"
    data = server.files[name]
    part = root / DOWNLOADS_DIR / f"{name}.part"
    part.parent.mkdir(parents=True)
    half = len(data) // 2
    part.write_bytes(data[:half])
    assert fetch(server, "babi", root) == 0
    assert server.requests == [(name, f"bytes={half}-")]
    assert server.body_bytes == len(data) - half
    assert len(load_babi_task(root / "babi" / "en-10k", "qa1")) == 4


def test_a_server_that_ignores_range_restarts_the_file(server: State, tmp_path: Path) -> None:
    root = tmp_path / "data"
    name = "tasks_1-20_v1-2.tar.gz"
    server.honour_range = False
    part = root / DOWNLOADS_DIR / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from some other file")
    assert fetch(server, "babi", root) == 0
    assert server.requests[-1][1] == "bytes=32-" and server.body_bytes == len(server.files[name])
    assert len(load_babi_task(root / "babi" / "en-10k", "qa5")) == 4


def test_an_existing_different_file_is_refused_without_overwrite(server: State, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    mine = root / "babi" / "en-10k" / TASK_FILES["qa1"]
    mine.parent.mkdir(parents=True)
    mine.write_text("1 My own story.\n2 Where am I? \there\t1\n")
    same = root / "babi" / "en-10k" / TASK_FILES["qa2"].replace("_train", "_test")
    same.write_text(STORY)  # identical to what would be installed: not a conflict
    assert fetch(server, "babi", root) == 1
    err = capsys.readouterr().err
    assert str(mine) in err and "--overwrite" in err and "nothing was changed" in err
    assert mine.read_text().startswith("1 My own story.")
    assert sorted(p.name for p in mine.parent.iterdir()) == sorted([mine.name, same.name])
    assert not (root / LOCK_FILE).exists()

    requests = len(server.requests)
    assert fetch(server, "babi", root, "--overwrite") == 0
    assert len(server.requests) == requests  # the verified archive kept from the refused run is reused
    assert [s.answer for s in load_babi_task(mine.parent, "qa1")][-1] == "north"
    assert "1 replaced" in capsys.readouterr().out
    assert leftovers(root) == []


def test_without_a_published_sha256_the_first_download_is_recorded_and_enforced(
        server: State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Books: trust on first use. The fixture cannot match NLTK's published MD5/size, so those are
    blanked here; the SHA-256 handling is the real code path."""
    books = dataclasses.replace(sources_module.SOURCES["books"], md5=None, size=None)
    monkeypatch.setitem(sources_module.SOURCES, "books", books)
    root = tmp_path / "data"
    lines: list[str] = []
    fetch_source("books", root, progress=False, log=lines.append)
    entry = json.loads((root / LOCK_FILE).read_text())["sources"]["books"]
    assert entry["checksum"] == TOFU and entry["archive_sha256"] == sha(server.files["gutenberg.zip"])
    assert any("trust on first use" in line for line in lines)

    (root / "noise" / "gutenberg" / "parables.txt").unlink()  # no longer intact: must download again
    server.files["gutenberg.zip"] = books_archive({**BOOKS, "extra.txt": b"An extra book appeared here.\n"})
    with pytest.raises(ChecksumError, match="recorded at first download"):
        fetch_source("books", root, progress=False, log=lines.append)
    assert not (root / "noise" / "gutenberg" / "extra.txt").exists()


def test_strip_gutenberg_boilerplate() -> None:
    text = PG_HEADER + b"Body line one.\nBody line two.\n" + PG_FOOTER
    assert strip_gutenberg_boilerplate(text) == b"Body line one.\nBody line two.\n"
    plain = b"[Emma by Jane Austen 1816]\n\nVOLUME I\n"
    assert strip_gutenberg_boilerplate(plain) is plain


def test_hotpotqa_env_prefers_the_400_question_file(tmp_path: Path) -> None:
    from qrag_gym.envs.hotpotqa import resolve_hotpotqa_file

    folder = tmp_path / "hotpotqa"
    folder.mkdir()
    (folder / "hotpot_dev_distractor_v1.jsonl").write_text("{}\n")
    assert resolve_hotpotqa_file(None, tmp_path).name == "hotpot_dev_distractor_v1.jsonl"
    (folder / "dev_subsampled_400.jsonl").write_text("{}\n")
    assert resolve_hotpotqa_file(None, tmp_path).name == "dev_subsampled_400.jsonl"


def test_check_reports_the_shared_data_complete(capsys) -> None:
    root = os.environ.get("QRAG_DATA_DIR")
    if not root or not Path(root).is_dir():
        pytest.skip("QRAG_DATA_DIR is not set to a data folder (e.g. ../shared/data): nothing real to check")
    assert main(["check", "--data-dir", root]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for name in ("babi", "books", "hotpotqa"):
        assert re.search(rf"^{name} +ok ", out, re.MULTILINE), out
    assert "qa1: train 10,000 questions, test 1,000 questions" in out


def test_check_reports_an_empty_folder_missing(tmp_path: Path, capsys) -> None:
    assert main(["check", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    for name in ("babi", "books", "hotpotqa"):
        assert re.search(rf"^{name} +MISSING ", out, re.MULTILINE), out
    assert f"qrag-data fetch babi books hotpotqa --to {tmp_path}" in out
    (tmp_path / "noise" / "gutenberg").mkdir(parents=True)
    (tmp_path / "noise" / "gutenberg" / "one.txt").write_text("One book only.\n")
    assert main(["check", "--data-dir", str(tmp_path)]) == 1
    assert "need at least 6" in capsys.readouterr().out


def test_argument_errors_name_the_argument(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fetch", "babi", "books", "--url", "http://127.0.0.1:9/x", "--to", str(tmp_path)])
    assert exit_info.value.code == 2 and "--url and --sha256 apply to one source" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fetch", "babi", "--sha256", "abc", "--to", str(tmp_path)])
    assert "--sha256 'abc' is not 64 hex digits" in capsys.readouterr().err
    assert main(["check", "--data-dir", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_an_unreachable_url_fails_with_the_url_named(tmp_path: Path, capsys) -> None:
    url = "http://127.0.0.1:9/tasks_1-20_v1-2.tar.gz"  # port 9 (discard): nothing listens
    assert main(["fetch", "babi", "--to", str(tmp_path), "--url", url, "--quiet"]) == 1
    assert f"{url}: cannot connect" in capsys.readouterr().err
    assert not (tmp_path / "babi").exists()


def test_the_cli_imports_no_torch() -> None:
    """``qrag-data --help`` must answer at once: the fetch/check modules pull in neither torch nor transformers."""
    code = ("import sys; import qrag_gym.data_cli, qrag_gym.data.fetch, qrag_gym.data.check; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
