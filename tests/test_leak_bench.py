"""bench/leak_iid.py runs and measures what it says: on independent random tokens a dense model's look-ahead probe
reads exactly 0, and so does the causal selection's, trained a few steps, where the paper's selection reads a
change (the full runs are in bench/RESULTS.md)."""

import sys

from training_helpers import REPO, one_thread

sys.path.insert(0, str(REPO / "bench"))
import leak_iid  # noqa: E402

SMALL = ["--steps", "2", "--every", "1", "--batch-size", "1", "--test-windows", "2", "--probe-windows", "2"]


def test_dense_and_causal_models_read_no_look_ahead(tmp_path):
    with one_thread():
        record = leak_iid.main(
            ["--backends", "sdpa", "lighthouse_naive", "--causal", *SMALL, "--json", str(tmp_path / "leak.json")]
        )
    assert [r["backend"] for r in record["results"]] == ["sdpa", "lighthouse_naive+causal"]
    for r in record["results"]:
        assert [step for step, _ in r["curve"]] == [1, 2]
        assert r["probe_cut"] == 0.0 and r["probe_by_distance"] == [0.0] * 5
    assert (tmp_path / "leak.json").exists()


def test_the_papers_selection_reads_a_look_ahead():
    with one_thread():
        (result,) = leak_iid.main(["--backends", "lighthouse_naive", *SMALL])["results"]
    assert result["backend"] == "lighthouse_naive" and result["probe_cut"] != 0.0
