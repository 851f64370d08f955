"""The corpus listing: glob semantics, and a walk that no symlink loop, FIFO or broken link can hang or abort."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "skipped 5 entries that are not regular files" in done.stderr  # the log line
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
