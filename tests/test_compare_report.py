"""bench/compare.py and bench/report.py on two tiny CPU runs through the real CLI: pairing, stop and resume across
time-limited calls, the final evaluation, and a report whose numbers are the logged ones."""

import json
import shutil
import statistics
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from training_helpers import REPO, logged_scalars, one_thread, tiny_bench_config

from lighthouse.eval.passkey import main as passkey_main
from lighthouse.train.cli import main as cli_main
from lighthouse.train.time_budget import TimeBudget

sys.path.insert(0, str(REPO / "bench"))
import compare  # noqa: E402
import report  # noqa: E402

STEPS, SWITCH = 8, 4
CONFIGS = sorted((REPO / "bench" / "configs").glob("compare_*.yaml"))


def tiny_compare_config(folder: Path) -> Path:
    """bench/configs/compare_32k.yaml with a CPU-sized model, corpus and passkey grid."""
    passkey = {"lengths": [256, 512], "depths": [0.25, 0.75], "samples": 1}
    return tiny_bench_config(CONFIGS[0], folder, model={"passkey": passkey})


def in_process(args: list[str], log: Path) -> int:
    """compare.py's runner, without a new interpreter per job (the subprocess runner only adds the process)."""
    try:
        cli_main(args)
        return 0
    except Exception:
        log.write_text(traceback.format_exc())
        return 1


def run_compare(config: Path, out: Path, *extra: str, runner=in_process) -> int:
    return compare.main(
        [
            "run",
            "--config",
            str(config),
            "--out",
            str(out),
            "--seeds",
            "0",
            "--steps",
            str(STEPS),
            "--share",
            str(SWITCH / STEPS),
            "--val-every",
            "4",
            "--eval-samples",
            "2",
            "--min-launch-minutes",
            "0",
            "--min-eval-minutes",
            "0",
            *extra,
        ],
        runner=runner,
    )


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    with one_thread():  # in this process and in the train.py processes it starts
        yield make_comparison(tmp_path_factory.mktemp("compare"))


def make_comparison(folder: Path) -> SimpleNamespace:
    config = tiny_compare_config(folder)
    out = folder / "cmp"
    # First call: every job must stop after one step (no time left), so the dense arm stops early ...
    first = run_compare(config, out, "--reserve-s", "1e9")
    # ... and the same command continues it, then runs the Lighthouse arm and both final evaluations.
    second = run_compare(config, out, "--reserve-s", "0")
    # The uninterrupted twin runs through real `python src/train.py` processes, as on the GPU.
    straight = run_compare(config, folder / "straight", "--arms", "dense", runner=compare.subprocess_runner)
    report_dir = folder / "report"
    markdown = report.build_report([out], report_dir)
    return SimpleNamespace(
        out=out,
        first=first,
        second=second,
        straight=straight,
        folder=folder,
        report_dir=report_dir,
        markdown=markdown.read_text(),
    )


def scalars(comparison, run: str, tag: str, out: str = "out") -> dict[int, float]:
    return logged_scalars(getattr(comparison, out) / run if out == "out" else comparison.folder / out / run, tag)


@pytest.mark.slow
def test_an_arm_stopped_for_time_resumes_with_the_same_losses(comparison):
    assert (comparison.first, comparison.second, comparison.straight) == (compare.MORE_TO_DO, 0, 0)
    launches = [json.loads(x) for x in (comparison.out / "dense-seed0" / "launches.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["resumed_from"]) for r in launches] == [("fit", None), ("fit", 1), ("validate", STEPS)]
    resumed = scalars(comparison, "dense-seed0", "train/loss")
    straight = scalars(comparison, "dense-seed0", "train/loss", out="straight")
    assert sorted(resumed) == list(range(1, STEPS + 1)) and resumed == straight  # bitwise
    assert "max_steps=8` reached" in (comparison.folder / "straight" / "dense-seed0" / "launch-0.log").read_text()
    # Only the newest checkpoint is kept, and it is the final one.
    assert sorted(p.name for p in (comparison.out / "dense-seed0" / "checkpoints").iterdir()) == [
        "step000008.ckpt",
        "step000008.ckpt.sha256",
    ]  # and its checksum (lighthouse.checkpoint.files)


def flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in flatten(sub, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


@pytest.mark.slow
def test_the_arms_are_paired_and_the_lighthouse_arm_switches_once(comparison):
    dense, lighthouse = (
        flatten(yaml.safe_load((comparison.out / "configs" / f"{arm}-seed0.yaml").read_text())) for arm in compare.ARMS
    )
    # Same seed (init and data order), data, schedule and steps: only the attention and the switch differ.
    assert {k for k in dense if dense[k] != lighthouse.get(k)} == {
        "model.arch.attention",
        "stage.switch_step",
        "trainer.logger.init_args.name",
    }
    stages = scalars(comparison, "lighthouse-seed0", "train/stage")
    assert [stages[s] for s in sorted(stages)] == [1.0] * SWITCH + [2.0] * (STEPS - SWITCH)
    assert set(scalars(comparison, "dense-seed0", "train/stage").values()) == {1.0}  # no switch in the dense arm


@pytest.mark.slow
def test_dense_validation_loss_is_computed_only_where_it_differs(comparison):
    dense = scalars(comparison, "dense-seed0", "val/loss")
    assert scalars(comparison, "dense-seed0", "val/loss_dense") == dense
    lh, lh_dense = (scalars(comparison, "lighthouse-seed0", t) for t in ("val/loss", "val/loss_dense"))
    before, after = SWITCH, STEPS  # the validations at the switch and at the end
    assert lh[before] != lh_dense[before]  # stage 1: the same weights, Lighthouse vs dense attention
    assert lh[after] == lh_dense[after]  # stage 2: the model is dense
    bucket = scalars(comparison, "lighthouse-seed0", "val/loss_dense_pos/0-256")
    assert set(bucket) == set(lh_dense)


@pytest.mark.slow
def test_final_evaluation_reproduces_the_last_validation(comparison):
    for run in ("dense-seed0", "lighthouse-seed0"):
        final = {
            t: next(iter(logged_scalars(comparison.out / run / "final_eval", t).values()))
            for t in ("val/loss", "val/loss_dense", "val/passkey_digit_acc")
        }
        assert final["val/loss_dense"] == pytest.approx(scalars(comparison, run, "val/loss_dense")[STEPS], abs=1e-6)
        if run.startswith("lighthouse"):  # evaluated with its stage-1 attention too: the look-ahead at the end
            assert final["val/loss"] != final["val/loss_dense"]
        assert (comparison.out / run / "final_eval" / "DONE").exists()


@pytest.mark.slow
def test_passkey_command_scores_a_checkpoint_like_the_final_evaluation(comparison, capsys):
    ckpt = comparison.out / "dense-seed0" / "checkpoints" / "step000008.ckpt"
    scores = passkey_main(
        [
            "--ckpt",
            str(ckpt),
            "--lengths",
            "256",
            "512",
            "--depths",
            "0.25",
            "0.75",
            "--samples",
            "2",
            "--device",
            "cpu",
            "--json",
            str(comparison.folder / "pk.json"),
        ]
    )
    final = comparison.out / "dense-seed0" / "final_eval"
    assert scores.accuracy()[1] == pytest.approx(next(iter(logged_scalars(final, "val/passkey_digit_acc").values())))
    assert "| 256 |" in capsys.readouterr().out
    assert json.loads((comparison.folder / "pk.json").read_text())["prompts"] == 8


@pytest.mark.slow
def test_report_holds_the_logged_numbers(comparison):
    md = comparison.markdown
    d_final = scalars(comparison, "dense-seed0", "val/loss_dense")[STEPS]
    lh_final = scalars(comparison, "lighthouse-seed0", "val/loss_dense")[STEPS]
    assert f"| 0 | {d_final:.4f} | {lh_final:.4f} | {lh_final - d_final:+.4f} |" in md
    assert "one seed: no spread" in md
    for section in (
        "Wall clock and throughput per phase",
        "Passkey retrieval",
        "Loss by position after recovery",
        "Lighthouse attention against dense on the same weights",
    ):
        assert section in md
    for name in ("val_loss_time", "val_loss_tokens", "tokens_per_sec", "loss_by_position", "passkey"):
        png = comparison.report_dir / f"cmp_{name}.png"
        assert f"]({png.name})" in md and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_compares_at_equal_wall_clock(comparison):
    plan, runs = report.load_comparison(comparison.out)
    by = {(r.arm, r.seed): r for r in runs}
    _, lh_t, lh_v = by[("lighthouse", 0)].curve[-1]
    dense = report.loss_at(by[("dense", 0)].curve, lh_t)
    row = f"| 0 | {lh_t / 60:.2f} | {lh_v:.4f} | " + (
        "- | - |" if dense is None else f"{dense:.4f} | {lh_v - dense:+.4f} |"
    )
    assert row in comparison.markdown


def test_loss_at_interpolates_between_validations_and_not_beyond():
    curve = [(10, 60.0, 3.0), (20, 120.0, 2.0), (30, 180.0, 1.5)]
    assert report.loss_at(curve, 90.0) == pytest.approx(2.5)
    assert report.loss_at(curve, 120.0) == 2.0
    assert report.loss_at(curve, 180.0) == 1.5
    assert report.loss_at(curve, 59.0) is None and report.loss_at(curve, 181.0) is None
    assert report.loss_at([], 1.0) is None


@pytest.mark.slow
def test_report_splits_each_jobs_wall_clock_over_the_phases(comparison):
    plan, runs = report.load_comparison(comparison.out)
    for run in runs:
        records = (comparison.out / f"{run.arm}-seed0" / "launches.jsonl").read_text().splitlines()
        jobs = [json.loads(x) for x in records]
        measured = sum(r["end"] - r["start"] for r in jobs if r["kind"] == "fit")
        assert run.total_wall_s == pytest.approx(measured)  # a partition: nothing lost, nothing counted twice
        assert 0 < run.validation_s < run.total_wall_s
        assert all(v > 0 for v in run.tokens_per_s.values())
    lh = next(r for r in runs if r.arm == "lighthouse")
    assert lh.wall_s["lighthouse"] > 0 and lh.wall_s["dense"] > 0 and set(lh.train_s) == {"lighthouse", "dense"}
    assert lh.at_switch["val/loss"] != lh.at_switch["val/loss_dense"]


# ---- pieces that need no training ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
@pytest.mark.parametrize("arm", compare.ARMS)
def test_shipped_configs_make_paper_model_arms(path, arm, tmp_path, capsys):
    base = yaml.safe_load(path.read_text())
    plan = compare.make_plan(
        compare.parse_args(["run", "--config", str(path), "--steps", str(base["trainer"]["max_steps"])])
    )
    arm_path = tmp_path / "arm.yaml"
    arm_path.write_text(yaml.safe_dump(compare.arm_config(base, plan, arm, 1, tmp_path, deadline=0, reserve_s=60)))
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", str(arm_path), "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["arch"]
    assert (model["dim"], model["n_layers"], model["n_heads"], model["ffn_hidden"]) == (1024, 30, 8, 1536)
    sizes = {k: model["lighthouse"][k] for k in ("levels", "pooling_factor", "topk")}
    assert model["dense_layers"] == [0, 1, 28, 29] and sizes == {"levels": 3, "pooling_factor": 4, "topk": 2048}
    assert model["attention"] == ("sdpa" if arm == "dense" else "lighthouse")
    assert printed["stage"]["switch_step"] == (None if arm == "dense" else round(0.625 * plan["steps"]))
    assert printed["seed_everything"] == printed["data"]["seed"] == 1
    assert printed["model"]["schedule_steps"] == printed["trainer"]["max_steps"] == plan["steps"]
    assert plan["switch_step"] % plan["val_every"] == 0 and plan["steps"] % plan["ckpt_every"] == 0


def test_validation_cadence_hits_the_switch_and_the_end():
    assert compare.cadence(320, 200) == 40 and compare.cadence(200, 125) == 25
    with pytest.raises(ValueError, match="pick --steps as a multiple of 8"):
        compare.cadence(301, 188)


def test_time_budget_stops_before_the_deadline_with_a_checkpoint(tmp_path):
    saved = []
    now = [100.0]
    trainer = SimpleNamespace(
        global_step=0,
        should_stop=False,
        save_checkpoint=saved.append,
        checkpoint_callback=SimpleNamespace(dirpath=str(tmp_path)),
        strategy=SimpleNamespace(reduce_boolean_decision=lambda x, all: x),
    )
    budget = TimeBudget(deadline=130.0, reserve_s=5.0, clock=lambda: now[0])
    budget.on_train_batch_start(trainer, None, None, 0)
    for step in range(1, 10):  # 4 s steps; at t=124 (step 6) the next would end at 128, + 5 s reserve > 130
        now[0] += 4.0
        trainer.global_step = step
        budget.on_train_batch_end(trainer, None, None, None, step - 1)
        if trainer.should_stop:
            break
        budget.on_train_batch_start(trainer, None, None, step)
    assert budget.stopped_at == 6 and saved == [str(tmp_path / "stop-step000006.ckpt")]
    with pytest.raises(ValueError, match="reserve_s=-1 must be >= 0"):
        TimeBudget(deadline=0, reserve_s=-1)


@pytest.mark.slow
def test_a_comparison_folder_refuses_other_settings(comparison):
    args = [
        "run",
        "--config",
        str(comparison.folder / "tiny.yaml"),
        "--out",
        str(comparison.out),
        "--steps",
        "16",
        "--share",
        "0.5",
        "--val-every",
        "4",
    ]
    with pytest.raises(ValueError, match="holds a comparison with other settings \\(steps"):
        compare.main(args, runner=in_process)
    assert (
        torch.load(comparison.out / "lighthouse-seed0" / "checkpoints" / "step000008.ckpt", weights_only=True)[
            "global_step"
        ]
        == STEPS
    )


@pytest.mark.parametrize(
    "archive", sorted((REPO / "bench" / "report" / "runs").glob("compare_*.tgz")), ids=lambda p: p.stem
)
def test_committed_report_is_what_the_archived_runs_give(archive, tmp_path):
    """bench/report/README.md is built from bench/report/runs/, never edited by hand: rebuilding the section of
    each archived comparison gives the committed text, line for line."""
    import tarfile

    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "runs", filter="data")
    (tmp_path / "report").mkdir()
    rebuilt = report.section(tmp_path / "runs" / archive.stem, tmp_path / "report")
    committed = (REPO / "bench" / "report" / "README.md").read_text().splitlines()
    start = committed.index(rebuilt[0])
    assert committed[start : start + len(rebuilt)] == rebuilt


def archived_comparison(folder: Path, name: str = "compare_32k") -> Path:
    """bench/report/runs/<name>.tgz unpacked under ``folder``: real runs to take seeds and final evaluations from."""
    import tarfile

    with tarfile.open(REPO / "bench" / "report" / "runs" / f"{name}.tgz") as tar:
        tar.extractall(folder / "runs", filter="data")
    (folder / "report").mkdir()
    return folder / "runs" / name


PER_SEED_TABLES = (
    "### Final validation loss (dense attention), paired by seed",
    "### Same wall clock: Lighthouse's final loss against dense at that time",
    "### Lighthouse attention against dense on the same weights",
)


def seeds_in_table(lines: list[str], heading: str) -> list[int]:
    """The seeds of the rows of the table under ``heading``, whose first column is the seed."""
    start = lines.index(heading) + 4  # the heading, a blank line, the header and its rule
    rows = lines[start : lines.index("", start)]
    return [int(cell) for cell in (row.split(" | ")[0].removeprefix("| ") for row in rows) if cell.isdigit()]


def test_a_seed_without_its_lighthouse_run_is_named_and_left_out_of_every_table(tmp_path):
    """Unnamed before: seed 1's dense run went into the per-arm means (three dense runs against two Lighthouse)."""
    out = archived_comparison(tmp_path)
    shutil.rmtree(out / "lighthouse-seed1")
    lines = report.section(out, tmp_path / "report")
    assert (
        "320 steps. Seeds [0, 2] (init and data order, paired); left out of every table and plot: seed 1: no "
        "Lighthouse + recovery run. Passkey documents" in lines[3]
    )
    assert all(seeds_in_table(lines, heading) == [0, 2] for heading in PER_SEED_TABLES)
    _, runs = report.load_comparison(out)
    dense = [r for r in runs if r.arm == "dense" and r.seed != 1]
    wall = report.minutes(statistics.fmean(r.total_wall_s for r in dense))
    assert wall != report.minutes(statistics.fmean(r.total_wall_s for r in runs if r.arm == "dense"))
    assert any(line.startswith(f"| dense | - | {wall} | {wall} |") for line in lines)  # the wall-clock table
    first_bucket = report.f(statistics.fmean(r.last["val/loss_dense_pos/0-256"] for r in dense))
    assert any(line.startswith(f"| 0-256 | {first_bucket} |") for line in lines)  # loss by position


def test_a_seed_without_a_final_evaluation_is_named_and_left_out(tmp_path):
    out = archived_comparison(tmp_path)
    shutil.rmtree(out / "dense-seed2" / "final_eval")
    lines = report.section(out, tmp_path / "report")
    assert (
        "Seeds [0, 1] (init and data order, paired); left out of every table and plot: seed 2: dense has no final "
        "evaluation." in lines[3]
    )
    assert all(seeds_in_table(lines, heading) == [0, 1] for heading in PER_SEED_TABLES)


def test_with_no_paired_seed_each_arms_runs_are_named(tmp_path):
    out = archived_comparison(tmp_path)
    for run in ("lighthouse-seed0", "dense-seed1", "dense-seed2", "lighthouse-seed2"):
        shutil.rmtree(out / run)
    lines = report.section(out, tmp_path / "report")
    assert (
        "No seed is paired (seed 0: no Lighthouse + recovery run; seed 1: no dense run); the tables below show every "
        "run of each arm, seeds dense [0], Lighthouse + recovery [1]." in lines[3]
    )
    assert PER_SEED_TABLES[0] not in lines and seeds_in_table(lines, PER_SEED_TABLES[2]) == [1]


def paired_result(diffs: list[float]) -> str:
    """The result line of paired_table for paired differences ``diffs`` (dense at 2.0, made-up wall clock)."""
    by = {}
    for seed, diff in enumerate(diffs):
        for arm, loss in (("dense", 2.0), ("lighthouse", 2.0 + diff)):
            by[arm, seed] = SimpleNamespace(final_loss=loss, total_wall_s=60.0, total_train_s=50.0)
    return report.paired_table({"steps": 320}, by, list(range(len(diffs))))[-1]


def test_the_call_is_made_only_where_the_t_interval_excludes_0():
    # Two seeds at +0.05 and +0.15: |mean| 0.1 > s.d. 0.071, but the 95 % interval (t = 12.71, 1 degree of
    # freedom) is 0.1 +- 0.635, which holds 0: |mean| > s.d. would call it worse; the t-interval makes no call.
    assert paired_result([0.05, 0.15]).endswith(
        "Result: the mean paired difference +0.1000 has the 95 % Student-t interval [-0.5353, +0.7353] over the "
        "seeds; a result is called only where it excludes 0: no call."
    )
    # Three seeds at -0.10, -0.11, -0.12: -0.11 +- 4.30 x 0.01 / sqrt(3), all below 0.
    assert paired_result([-0.10, -0.11, -0.12]).endswith(
        "interval [-0.1348, -0.0852] over the seeds; a result is called only where it excludes 0: LH lower."
    )
    assert paired_result([0.05]).endswith(
        "Result: one seed: no spread to compare the difference with, so no call is made."
    )


def test_a_folder_that_is_no_comparison_is_said_in_one_line(tmp_path, capsys):
    code = compare.main(["report", "--out", str(tmp_path), "--report-dir", str(tmp_path / "report")])
    assert code == 2
    assert capsys.readouterr().err == (
        f"compare report: [Errno 2] No such file or directory: '{tmp_path / 'compare.json'}'\n"
    )
