"""The corpus listing: glob semantics, a walk that no symlink loop, FIFO or broken link can hang or abort, names
that cannot be document keys, and the files of other types a directory leaves out."""

from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datagen import build

from lighthouse.data.corpus import check_corpus_arg, resolve_corpus
from lighthouse.data.documents import read_file

SRC = Path(__file__).resolve().parents[2] / "src"
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")

# Every kind of entry the walk must pass over, and how each is counted.
EXPECTED_SKIPS = {"directory link (not followed)": 2, "not a regular file": 1, "broken link": 1, "looping link": 1}


def hostile_folder(root: Path) -> Path:
    """Regular files next to two directory loops, a FIFO named like a document, a broken and a looping link."""
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("first document\n")
    (root / "sub" / "b.txt").write_text("second document\n")
    (root / "link.txt").symlink_to(root / "a.txt")  # a link to a regular file is read
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)
    os.mkfifo(root / "pipe.txt")  # open() would wait forever for a writer
    (root / "dangling.txt").symlink_to(root / "missing.txt")
    (root / "self.txt").symlink_to("self.txt")
    return root


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter: a hang becomes a TimeoutExpired here, not a stuck test session."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


BUILD = """
import json, sys
from lighthouse.data.build import Selection
from lighthouse.data.cache import prepare
from lighthouse.data.corpus import resolve_corpus
from lighthouse.data.tokenizer import parse_tokenizer_spec
corpus = resolve_corpus(sys.argv[1] if len(sys.argv) > 1 else {corpus!r})
p = prepare(corpus, parse_tokenizer_spec("byte"), {data!r}, Selection(0.5), num_proc=1, progress=False)
print(json.dumps({{"files": [f["path"] for f in p.manifest["files"]], "skipped": p.manifest["corpus"]["skipped"]}}))
"""


@needs_fifo
@pytest.mark.parametrize("kind", ["glob", "directory"])
def test_symlink_loops_fifos_and_bad_links_are_skipped_and_counted(tmp_path, kind):
    root = hostile_folder(tmp_path / "corpus")
    corpus = str(root / "**" / "*.txt") if kind == "glob" else str(root)
    done = run_python(BUILD.format(corpus=corpus, data=str(tmp_path / "data")))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["files"] == ["a.txt", "link.txt", "sub/b.txt"]
    assert result["skipped"] == EXPECTED_SKIPS
    assert "skipped 5 entries (not regular files, or names not UTF-8)" in done.stderr  # the log line
    assert "pipe.txt (not a regular file)" in done.stderr


@needs_fifo
def test_a_file_that_became_a_fifo_after_the_listing_is_skipped_not_waited_on(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "doc.txt").write_text("text\n")
    code = f"""
import os
from lighthouse.data.corpus import resolve_corpus
from lighthouse.data.documents import read_file
(src,) = resolve_corpus({str(tmp_path / "c")!r}).files
os.remove(src.path)
os.mkfifo(src.path)
r = read_file(src)
print(r.skipped, len(r.docs))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("unreadable (NotRegularFile") and done.stdout.split()[-1] == "0"


@needs_fifo
def test_a_fifo_or_a_glob_of_nothing_regular_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(ValueError, match="not a regular file or a directory"):
        check_corpus_arg(str(tmp_path / "pipe.txt"))
    with pytest.raises(ValueError, match="the glob matches no files"):
        check_corpus_arg(str(tmp_path / "*.txt"))
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(ValueError, match="holds no .txt"):
        check_corpus_arg(str(tmp_path / "dir"))


GLOBS = ["**/*.txt", "*", "**", "sub/*", "sub/**/*.log", "**/.h*", "s*/**/*.txt", "*.txt", "sub/deep/*", "**/d?.*"]


@pytest.mark.parametrize("pattern", GLOBS)
def test_glob_listing_matches_the_standard_glob_without_links(tmp_path, pattern):
    """Without symlinks the walk lists exactly the regular files glob.glob(recursive=True) finds."""
    root = tmp_path / "tree"
    for rel in ["a.txt", ".h.txt", "x.jsonl", "sub/b.txt", "sub/.hid/c.txt", "sub/deep/d1.log", "sub/deep/d2.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    expected = sorted(p for p in glob.glob(str(root / pattern), recursive=True) if os.path.isfile(p))
    listed = sorted(f.path for f in resolve_corpus(str(root / pattern)).files)
    assert listed == expected and listed


def test_a_vanished_file_is_skipped_with_its_reason(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "doc.txt").write_text("text\n")
    (src,) = resolve_corpus(str(tmp_path / "c")).files
    os.remove(src.path)
    r = read_file(src)
    assert r.skipped.startswith("unreadable (FileNotFoundError") and r.docs == [] and r.sha256 is None


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        resolve_corpus(str(corpus))


def _bytes_name(path: bytes, data: bytes = b"") -> None:
    """Create a file under a name that is not UTF-8 (skip where the file system refuses one, as macOS does)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    except OSError as e:
        pytest.skip(f"this file system refuses names that are not UTF-8: {e}")
    os.write(fd, data)
    os.close(fd)


@pytest.mark.parametrize("kind", ["directory", "glob"])
def test_a_name_that_is_not_utf8_is_skipped_when_listed(tmp_path, caplog, kind):
    """Before: the build stopped after tokenizing every earlier file, with an encode error naming no file."""
    root = tmp_path / "c"
    root.mkdir()
    (root / "a.txt").write_text("first document\n")
    _bytes_name(os.fsencode(root) + b"/latin1_\xe9.txt", b"latin-1 name\n")
    os.mkdir(os.fsencode(root) + b"/dir_\xff")  # a folder: counted once, not entered
    _bytes_name(os.fsencode(root) + b"/dir_\xff/inside.txt", b"below it\n")
    (root / "z.txt").write_text("last document\n")
    corpus = root if kind == "directory" else root / "**" / "*.txt"
    with caplog.at_level(logging.WARNING):
        p = build(corpus, tmp_path / "data")
    assert [f["path"] for f in p.manifest["files"]] == ["a.txt", "z.txt"]
    assert p.manifest["corpus"]["skipped"] == {"name not UTF-8": 2}
    assert r"'dir_\\xff (name not UTF-8)', 'latin1_\\xe9.txt (name not UTF-8)'" in caplog.text  # the raw bytes


def test_a_single_file_corpus_whose_name_is_not_utf8_is_refused_at_once(tmp_path):
    _bytes_name(os.fsencode(tmp_path) + b"/latin1_\xe9.txt", b"text\n")
    with pytest.raises(ValueError, match="the file name is not UTF-8"):
        check_corpus_arg(os.fsdecode(os.fsencode(tmp_path) + b"/latin1_\xe9.txt"))


def test_a_directory_or_glob_of_nothing_readable_says_what_it_passed_over(tmp_path):
    _bytes_name(os.fsencode(tmp_path) + b"/latin1_\xe9.txt", b"text\n")
    (tmp_path / "records.json").write_text("{}\n")
    with pytest.raises(ValueError, match=r"holds no .*; passed over: \{'name not UTF-8': 1, 'other file type': 1\}"):
        check_corpus_arg(str(tmp_path))
    with pytest.raises(ValueError, match=r"the glob matches no files .*; passed over: \{'name not UTF-8': 1\}$"):
        check_corpus_arg(str(tmp_path / "*.txt"))


def other_types_folder(root: Path) -> Path:
    """One .txt document among files a directory corpus does not read (7 counted, 2 hidden ones not)."""
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a.txt").write_text("the only document\n")
    for rel in ["b.json", "c.json", "sub/d.json", "notes.md", "table.csv.gz", "README", ".DS_Store", ".hidden/e.json"]:
        (root / rel).write_text("{}\n")
    (root / "link.md").symlink_to(root / "notes.md")  # a link to a regular file counts like one
    (root / "gone.md").symlink_to(root / "missing.md")  # a broken link reads as nothing: not counted
    return root


def test_a_directory_counts_and_logs_the_files_of_other_types_it_leaves_out(tmp_path, caplog):
    """Before: a dataset of JSON Lines saved as .json was left out without a word."""
    root = other_types_folder(tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        p = build(root, tmp_path / "data")
    assert [f["path"] for f in p.manifest["files"]] == ["a.txt"]
    assert p.manifest["corpus"]["skipped"] == {"other file type": 7}
    lines = [r.getMessage() for r in caplog.records if "files of other types" in r.getMessage()]
    assert len(lines) == 1  # once, not a line per file
    assert lines[0].startswith(
        f"corpus={str(root)!r}: left out 7 files of other types {{'.json': 3, '.md': 2, '(no extension)': 1, "
        "'.csv.gz': 1}: a directory corpus reads only .txt, .jsonl"
    )
    assert "rename them to .jsonl" in lines[0]


def test_a_glob_or_the_python_sources_count_no_files_of_other_types(tmp_path, caplog):
    """A glob names the files it wants; the stdlib corpus is its .py files (660 other files in 3.11's)."""
    root = other_types_folder(tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        assert resolve_corpus(str(root / "*.txt")).skipped == {}
        assert "other file type" not in resolve_corpus("stdlib").skipped
    assert "files of other types" not in caplog.text
