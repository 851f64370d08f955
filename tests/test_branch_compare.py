"""bench/branch.py and bench/branch_report.py (with branch_seeds.py and student_t.py): the plan arithmetic, one
tiny seed of the branch design through the real CLI on CPU (shared warm-up, three arms resumed from its checkpoint,
final evaluations), its archive, and a report whose intervals are checked against hand-computed ones."""

import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from training_helpers import REPO, logged_scalars, one_thread, renumber_seed, tiny_bench_config

from lighthouse.train.cli import main as cli_main

sys.path.insert(0, str(REPO / "bench"))
import branch  # noqa: E402
import branch_report  # noqa: E402
import branch_seeds  # noqa: E402
import compare  # noqa: E402
import student_t  # noqa: E402

W, S = 4, 16  # switch at round(0.625 * 16) = 10; validations every 2 steps


# ---- the plan, no training ---------------------------------------------------------------------------------------
def test_plan_puts_the_switch_at_its_share_and_validates_at_w_switch_and_s():
    plan = branch.make_plan(1000, 200, 0.625)
    assert plan["switch_step"] == 625 and plan["val_every"] == 25  # gcd(200, 625, 1000) = 25: 40 validations
    plan = branch.make_plan(800, 200, 0.625)
    assert plan["switch_step"] == 500 and plan["val_every"] == 100  # the fewest validations giving >= 8 over S
    for steps, warmup in ((1000, 200), (800, 200), (640, 160), (16, 4), (960, 240)):
        p = branch.make_plan(steps, warmup, 0.625)
        for step in (p["warmup"], p["switch_step"], p["steps"]):
            assert step % p["val_every"] == 0, (steps, warmup)
        assert steps // p["val_every"] >= branch.MIN_VALIDATIONS or p["val_every"] == 1
    with pytest.raises(ValueError, match="must divide --warmup 200, the switch 625 and --steps 1000"):
        branch.make_plan(1000, 200, 0.625, val_every=50)
    with pytest.raises(ValueError, match="0 <= warmup < switch < steps"):
        branch.make_plan(1000, 700, 0.625)
    with pytest.raises(ValueError, match="0 <= warmup < switch < steps"):
        branch.make_plan(1000, -1, 0.625)


def test_equal_time_arm_gets_the_steps_that_take_the_lighthouse_arms_time():
    # LH: 425 steps at 0.25 s + 375 steps at 0.5 s = 293.75 s; D's dense step 0.5 s -> 587.5 -> 588 steps.
    n, lh_s = branch.equal_time_steps({"lighthouse": (425, 0.25), "sdpa": (375, 0.5)}, 0.5)
    assert (n, lh_s) == (588, 293.75)
    assert branch.equal_time_steps({"lighthouse": (1, 1e-6)}, 1.0)[0] == 1  # never an empty arm
    plan = branch.make_plan(1000, 200, 0.625)
    lh = [
        {"step": 210, "attention": "lighthouse", "step_time_s": 0.2},
        {"step": 620, "attention": "lighthouse", "step_time_s": 0.3},
        {"step": 700, "attention": "sdpa", "step_time_s": 0.6},
        {"step": 150, "attention": "sdpa", "step_time_s": 9.0},  # before W: not the arm's (ignored)
    ]
    d = [{"step": 300, "attention": "sdpa", "step_time_s": 0.5}, {"step": 900, "attention": "sdpa", "step_time_s": 0.7}]
    rec = branch.measure_equal_time(plan, lh, d)
    lh_time = 425 * 0.25 + 375 * 0.6
    assert rec["lh_time_s"] == pytest.approx(lh_time) and rec["e_steps"] == round(lh_time / 0.6)
    assert rec["e_end"] == 200 + rec["e_steps"]
    with pytest.raises(ValueError, match="cannot size E: steady-state step times missing"):
        branch.measure_equal_time(plan, lh[:2], d)


def test_estimate_counts_each_arm_at_the_measured_tokens_per_second():
    est = branch.estimate(1000)
    step_dense, step_lh = 131072 / 235e3, 131072 / 543e3
    assert est["train_min"]["D"] == pytest.approx(800 * step_dense / 60)
    assert est["train_min"]["warmup"] == pytest.approx(200 * 2.0 * step_dense / 60)  # deterministic: 2.0x
    assert est["train_min"]["LH"] == pytest.approx((425 * step_lh + 375 * step_dense) / 60)
    assert est["train_min"]["E"] == est["train_min"]["LH"] and est["e_steps"] == round(
        est["train_min"]["LH"] * 60 / step_dense
    )


def test_t_interval_matches_a_hand_computed_case():
    # differences 0.01, 0.02, 0.06: mean 0.03, s.d. sqrt(((-.02)^2 + (-.01)^2 + .03^2) / 2) = sqrt(0.0007),
    # t(0.975, 2) = 4.302653: half-width 4.302653 * sqrt(0.0007) / sqrt(3) = 0.065725.
    mean, lo, hi = student_t.t_interval([0.01, 0.02, 0.06])
    assert mean == pytest.approx(0.03)
    assert (hi - lo) / 2 == pytest.approx(4.302653 * math.sqrt(0.0007) / math.sqrt(3), rel=1e-5)
    for df, t in ((1, 12.706205), (4, 2.776445), (10, 2.228139), (30, 2.042272), (200, 1.971896)):
        assert student_t.t_quantile(0.975, df) == pytest.approx(t, rel=1e-5)
    assert student_t.t_interval([0.5]) == (0.5, None, None)
    assert student_t.call(-0.03, -0.05, -0.01) == "LH lower" and student_t.call(0.0, -0.1, 0.1) == "no call"


def curve_arm(name: str, dense: dict[int, float], sparse: dict[int, float] | None = None) -> branch_seeds.Arm:
    """An Arm with only a validation curve (what the realization table reads)."""
    curve = [(step, 0.0, v) for step, v in sorted(dense.items())]
    return branch_seeds.Arm(name, curve, sparse or {}, None, None, None, {}, {}, {}, 1, max(dense))


def test_realization_table_compares_each_attempt_with_the_kept_run_on_common_steps():
    # LH kept: own (Lighthouse) attention 2.0 / 1.5 at 100 / 200 (its switch), dense 1.4 at 300. The attempt reached
    # 250 (its last validation off the cadence) and read 2.1 / 1.45: compared at 100 and 200 only, on the loss with
    # the run's own attention, not the dense reading (3.0 / 3.2) that also exists in the Lighthouse phase.
    kept = curve_arm("LH", {100: 3.0, 200: 3.2, 300: 1.4}, {100: 2.0, 200: 1.5})
    attempt = curve_arm("LH", {100: 3.3, 200: 3.1, 250: 1.6}, {100: 2.1, 200: 1.45})
    seed = branch_seeds.SeedRun(Path("."), 7, {}, None, None, {}, None, {"LH": kept}, {"LH": [(1, attempt)]})
    row = "| 7 | LH | 1 | 2 | 200 | 1.5000 | 1.4500 | -0.0500 | 0.1000 (100) |"
    assert branch_report.realization_table([seed])[2] == row
    seed.attempts["E"] = [(2, attempt)]  # an attempt whose run has no kept arm (not trained again yet): no row
    assert len([r for r in branch_report.realization_table([seed]) if r.startswith("| 7 |")]) == 1


def test_a_seed_folder_refuses_other_settings(tmp_path, capsys):
    config = str(REPO / "bench" / "configs" / "branch_32k.yaml")
    out = tmp_path / "seed0"
    out.mkdir()
    plan = {**branch.make_plan(1000, 200, 0.625), "seed": 0, "config": config, "eval_windows": 256, "extra": []}
    (out / "plan.json").write_text(json.dumps(plan))
    rc = branch.main(["run", "--config", config, "--out", str(out), "--steps", "800"], runner=None)
    assert rc == branch.BAD_FOLDER
    assert f"branch: {out} holds a branch seed with other settings (steps, switch_step" in capsys.readouterr().err
    assert json.loads((out / "plan.json").read_text()) == plan  # left as it was, nothing launched
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]


def final_jobs(tmp_path: Path, arm: str, *flags: str) -> list[str]:
    """The evaluation modules Seed.evaluate launches for a trained ``arm`` (a stub runner writes their outputs)."""
    config = str(REPO / "bench" / "configs" / "branch_32k.yaml")
    args = branch.parse_args(["run", "--config", config, "--out", str(tmp_path / "seed"), "--steps", "800", *flags])
    launched = []

    def stub(argv: list[str], log: Path) -> int:
        launched.append(argv[1])
        Path(argv[-1]).write_text("{}")  # every evaluation's last argument is its output file
        return 0

    seed = branch.Seed(args, stub)
    for step in (500, 800):
        (seed.out / arm / "checkpoints").mkdir(parents=True, exist_ok=True)
        (seed.out / arm / "checkpoints" / f"step{step:06d}.ckpt").write_bytes(b"")
    assert seed.evaluate(arm) == 0
    return launched


def test_final_recall_can_be_left_out(tmp_path):
    recall = "lighthouse.eval.recall"
    assert final_jobs(tmp_path / "a", "D") == ["lighthouse.eval.window_losses", recall]
    assert final_jobs(tmp_path / "b", "LH", "--no-final-recall") == [
        "lighthouse.eval.window_losses",
        "lighthouse.eval.lookahead",
    ]


@pytest.mark.parametrize(("name", "val_windows"), [("branch_32k", 64), ("branch_64k", 64), ("branch_128k", 16)])
def test_shipped_branch_config_makes_arms_the_cli_accepts(name, val_windows, tmp_path, capsys):
    base = yaml.safe_load((REPO / "bench" / "configs" / f"{name}.yaml").read_text())
    plan = branch.make_plan(1000, 200, 0.625)
    equal_time = {"e_end": 760}
    printed = {}
    for run in branch.RUNS:
        path = tmp_path / f"{run}.yaml"
        path.write_text(yaml.safe_dump(branch.run_config(base, plan, run, 3, tmp_path, equal_time)))
        with pytest.raises(SystemExit) as info:
            cli_main(["fit", "--config", str(path), "--print_config"])
        assert info.value.code == 0
        printed[run] = yaml.safe_load(capsys.readouterr().out)
    assert {r: p["trainer"]["max_steps"] for r, p in printed.items()} == {
        "warmup": 200,
        "D": 1000,
        "LH": 1000,
        "LHc": 1000,
        "E": 760,
    }
    for arm in ("LH", "LHc"):
        assert [(p["start"], p["attention"]) for p in printed[arm]["stage"]["schedule"]] == [
            (0, "sdpa"),
            (200, "lighthouse"),
            (625, "sdpa"),
        ]
    # LHc is LH with the strictly causal selection, on the same (Triton) backend; no other arm has it.
    assert {r: p["model"]["arch"]["lighthouse"]["causal"] for r, p in printed.items()} == {
        "warmup": False,
        "D": False,
        "LH": False,
        "LHc": True,
        "E": False,
    }
    lh, lhc = (json.loads(json.dumps(printed[a])) for a in ("LH", "LHc"))
    lhc["model"]["arch"]["lighthouse"]["causal"] = False
    for config in (lh, lhc):
        config["trainer"]["logger"]["init_args"].pop("name")
    assert lh == lhc
    assert printed["E"]["stage"]["schedule"][1] == {"start": 200, "attention": "sdpa", "rescale_lr": True}
    for p in printed.values():
        assert p["seed_everything"] == p["data"]["seed"] == 3 and p["model"]["schedule_steps"] == 1000
        assert p["trainer"]["val_check_interval"] == 25 and p["model"]["arch"]["flavor"] == "small"
        # Every context trains on 131072 tokens per step (131072 validates on fewer, 4x longer windows); K keeps
        # S_sel at 31 % of N.
        data, lh_geometry = p["data"], p["model"]["arch"]["lighthouse"]
        assert data["seq_len"] * data["batch_size"] == 131072
        assert data["val_batches"] * data["batch_size"] == val_windows
        assert lh_geometry["topk"] * 32 == data["seq_len"]


def test_export_of_a_missing_folder_says_so(tmp_path, capsys):
    assert branch.main(["export", "--out", str(tmp_path / "nothing"), "--to", str(tmp_path)]) == 2
    assert "is not a seed folder" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_arms_subset_and_e_needs_d_and_lh(capsys):
    config = str(REPO / "bench" / "configs" / "branch_32k.yaml")
    assert branch.parse_args(["run", "--config", config, "--arms", "LH"]).arms == ["LH"]
    assert branch.parse_args(["run", "--config", config]).arms == ["D", "LH", "E"]
    assert branch.parse_args(["run", "--config", config, "--arms", "D", "LHc", "LH"]).arms == ["D", "LHc", "LH"]
    with pytest.raises(SystemExit):
        branch.parse_args(["run", "--config", config, "--arms", "LH", "E"])
    assert "--arms LH E: E needs D and LH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        branch.parse_args(["run", "--config", config, "--warmup", "0", "--require-drop"])
    assert "--warmup 0 (from scratch) has none" in capsys.readouterr().err
    assert branch.parse_args(["run", "--config", config, "--warmup", "0", "--seed", "2"]).out.endswith(
        "logs/branch_32k-scratch-seed2"
    )


# ---- one tiny seed through the real CLI ----------------------------------------------------------------------------
def tiny_branch_config(folder: Path) -> Path:
    """bench/configs/branch_32k.yaml with a CPU-sized model, corpus and recall set."""
    return tiny_bench_config(
        REPO / "bench" / "configs" / "branch_32k.yaml",
        folder,
        n_docs=24,
        trainer={"log_every_n_steps": 1},
        model={"recall": {"windows": 2, "pairs": 2, "seed": 0}},
        data={"recall_pairs": 2},
    )


def in_process(args: list[str], log: Path) -> int:
    """branch.py's runner without a new interpreter per job: train.py's CLI, or an eval module's main(). A job's
    ``trainer.deterministic`` (the warm-up's) is undone afterwards, as a job's own interpreter would end it."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        if args[0] == "src/train.py":
            cli_main(args[1:])
        else:
            assert args[0] == "-m", args
            importlib.import_module(args[1]).main(args[2:])
        return 0
    except Exception:
        log.write_text(traceback.format_exc())
        return 1
    finally:
        torch.use_deterministic_algorithms(deterministic)


def run_seed(config: Path, out: Path, seed: int = 0, *extra: str) -> int:
    args = ["run", "--config", str(config), "--out", str(out), "--seed", str(seed), "--warmup", str(W)]
    args += ["--steps", str(S), "--eval-windows", "4", "--lookahead-windows", "2"]
    args += ["--min-launch-minutes", "0", "--min-eval-minutes", "0", *extra]
    return branch.main(args, runner=in_process)


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("branch")
    with one_thread():
        config = tiny_branch_config(folder)
        out = folder / "tiny-seed0"
        arms = ["--arms", "D", "LH", "LHc", "E"]
        first = run_seed(config, out, 0, "--reserve-s", "1e9", *arms)  # every job stops after one step: time is up
        second = run_seed(config, out, 0, "--reserve-s", "0", *arms)
        yield SimpleNamespace(folder=folder, config=config, out=out, first=first, second=second)


def launches(out: Path, run: str) -> list[dict]:
    return [json.loads(x) for x in (out / run / "launches.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_seed_branches_three_arms_off_one_warmup(seed):
    assert (seed.first, seed.second) == (branch.MORE_TO_DO, 0) and (seed.out / "DONE").exists()
    # The first call's warm-up stopped for time after one step; the second resumed it, then every arm started
    # from the warm-up's checkpoint at W.
    assert [(r["kind"], r["resumed_from"]) for r in launches(seed.out, "warmup")] == [("fit", None), ("fit", 1)]
    for arm in branch.ARMS:
        fits = [r for r in launches(seed.out, arm) if r["kind"] == "fit"]
        assert fits[0]["resumed_from"] == W and all(r["rc"] == 0 for r in launches(seed.out, arm))
        assert {r["device"] for r in launches(seed.out, arm)} == {"cpu"}  # the machine of each job, for the report
    # train/stage of optimizer step k is logged at k (a resumed run also logs its checkpoint's phase at W).
    stage = {
        arm: {k: v for k, v in logged_scalars(seed.out / arm, "train/stage").items() if k > W} for arm in branch.ARMS
    }
    for lh in (stage["LH"], stage["LHc"]):
        assert [lh[s] for s in sorted(lh)] == [2.0] * (10 - W) + [3.0] * (S - 10)  # phases 2 (Lighthouse), 3 (dense)
    assert set(stage["D"].values()) == {1.0} and set(stage["E"].values()) == {2.0}  # E: its rescaled phase
    # The same data after W in every arm (same seed, resumed stream): the first step's loss differs only by the
    # attention (LH) and not at all between D and E.
    first = {arm: logged_scalars(seed.out / arm, "train/loss")[W + 1] for arm in branch.ARMS}
    assert first["D"] == first["E"] != first["LH"]


@pytest.mark.slow
def test_tiny_seed_records_the_warmup_check_and_the_equal_time_rule(seed):
    check = json.loads((seed.out / "warmup_check.json").read_text())
    assert check["step"] == W and check["early_range"] == "0-256" and check["late_range"] == "256-512"
    assert check["drop"] == (check["late_loss"] < check["early_loss"])
    record = json.loads((seed.out / "warmup_fingerprint.json").read_text())
    assert record == {
        "step": W,
        "sha256": branch.fingerprint(branch.checkpoint_at(seed.out / "warmup", W)),
        "device": "cpu",
        "deterministic": True,
    }
    rule = json.loads((seed.out / "equal_time.json").read_text())
    assert rule["e_steps"] == max(1, round(rule["lh_time_s"] / rule["d_dense_step_s"]))
    e = torch.load(branch.checkpoints(seed.out / "E")[-1][1], weights_only=True, map_location="cpu")
    assert e["global_step"] == rule["e_end"] == W + rule["e_steps"]
    e_cfg = yaml.safe_load((seed.out / "configs" / "E.yaml").read_text())
    assert e_cfg["trainer"]["max_steps"] == rule["e_end"]


@pytest.mark.slow
def test_tiny_seed_final_evaluation_and_checkpoints(seed):
    for arm in branch.ARMS:
        final = seed.out / arm / "final"
        losses = json.loads((final / "window_losses.json").read_text())
        assert losses["step"] == (S if arm != "E" else json.loads((seed.out / "equal_time.json").read_text())["e_end"])
        assert len(losses["losses"]) >= 2
        assert set(json.loads((final / "recall.json").read_text())["bins"])
        assert [s for s, _ in branch.checkpoints(seed.out / arm)] == [losses["step"]]  # only the newest is kept
    probe = {arm: json.loads((seed.out / arm / "final" / "lookahead.json").read_text()) for arm in ("LH", "LHc")}
    assert all(p["step"] == 10 and p["backend"] == "lighthouse_naive" for p in probe.values())
    # The strictly causal selection reads nothing from later in its tile: exactly 0 (the paper's need not be).
    assert probe["LHc"]["cut_difference"] == 0.0 and probe["LHc"]["difference"] == 0.0


@pytest.mark.slow
def test_validation_at_an_arms_end_scores_recall_like_the_final_evaluation(seed):
    """What lets the report stand in the last validation's recall for a final evaluation left out."""
    from report import read_logged

    for arm in ("D", "LH", "LHc"):
        final = json.loads((seed.out / arm / "final" / "recall.json").read_text())
        logged, _ = read_logged(seed.out / arm)
        from_validation = branch_seeds.recall_at(logged, S)
        assert from_validation is not None and set(from_validation["bins"]) == set(final["bins"])
        for name, metrics in final["bins"].items():
            for metric in branch_seeds.RECALL_METRICS:
                assert from_validation["bins"][name][metric] == pytest.approx(metrics[metric], abs=1e-6), (arm, name)
    assert branch_seeds.recall_at(logged, S - 1) is None  # no validation at that step


@pytest.mark.slow
def test_archive_unpacks_side_by_side_and_the_report_aggregates_seeds(seed):
    archives = seed.folder / "archives"
    first = branch.export(seed.out, archives)
    assert first.name == "tiny-seed0.tgz"
    with tarfile.open(first) as tar:
        names = tar.getnames()
    assert all(n.startswith("tiny-seed0") for n in names) and not any(n.endswith(".ckpt") for n in names)
    assert "tiny-seed0/LH/final/window_losses.json" in names and "tiny-seed0/plan.json" in names
    # The arms resume the warm-up's data: its manifest is archived once.
    assert [n for n in names if n.endswith("data_manifest.json")] == ["tiny-seed0/warmup/data_manifest.json"]
    # A second "seed" whose arms are the first one's with known shifts: the intervals are then known numbers.
    twin = seed.folder / "tiny-seed1"
    shutil.copytree(seed.out, twin, ignore=shutil.ignore_patterns("*.ckpt", "*.sha256"))
    renumber_seed(twin, 1)
    shifts = {"D": 0.0, "LH": -0.02, "LHc": -0.03, "E": 0.01}
    for arm, shift in shifts.items():
        path = twin / arm / "final" / "window_losses.json"
        data = json.loads(path.read_text())
        data["losses"] = [x + shift for x in data["losses"]]
        path.write_text(json.dumps(data))
    second = branch.export(twin, archives)
    report_dir = seed.folder / "report"
    markdown = branch_report.build_report([first, second], report_dir).read_text()
    seeds = branch_seeds.load_seeds([first, second], seed.folder / "unpacked")
    assert [s.seed for s in seeds] == [0, 1]
    d0 = [s.final_loss("LH") - s.final_loss("D") for s in seeds]
    assert d0[1] - d0[0] == pytest.approx(-0.02)
    mean, lo, hi = student_t.t_interval(d0)
    assert f"| LH - D | {mean:+.4f} | [{lo:+.4f}, {hi:+.4f}] |" in markdown
    mean, lo, hi = student_t.t_interval([s.final_loss("LHc") - s.final_loss("LH") for s in seeds])
    assert f"| LHc - LH | {mean:+.4f} | [{lo:+.4f}, {hi:+.4f}] | 2 | " in markdown
    for title in ("Wall clock", "Recall after recovery", "Loss by position", "Look-ahead at the switch"):
        assert title in markdown
    for name in ("val_loss_tokens", "val_loss_time"):
        png = report_dir / f"branch_{name}.png"
        assert f"]({png.name})" in markdown and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A third seed whose E arm never got its final evaluation (the device time ran out): it counts in LH - D only.
    cut = seed.folder / "tiny-seed2"
    shutil.copytree(twin, cut)
    renumber_seed(cut, 2)
    shutil.rmtree(cut / "E" / "final")
    markdown = branch_report.build_report([first, second, branch.export(cut, archives)], report_dir).read_text()
    seeds = branch_seeds.load_seeds([first, second, cut], seed.folder / "unpacked3")
    assert [s.complete for s in seeds] == [True, True, False] and seeds[2].evaluated("LH")
    mean, lo, hi = student_t.t_interval([s.final_loss("LH") - s.final_loss("D") for s in seeds])
    assert f"| LH - D | {mean:+.4f} | [{lo:+.4f}, {hi:+.4f}] | 3 |" in markdown
    mean, lo, hi = student_t.t_interval([s.final_loss("LH") - s.final_loss("E") for s in seeds[:2]])
    assert f"| LH - E | {mean:+.4f} | [{lo:+.4f}, {hi:+.4f}] | 2 |" in markdown
    assert "seed 2: ['E']" in markdown  # the design's arms only: LHc is an added experiment
    assert "| 2 | LH | 10 |" in markdown and "| 2 | LHc | 10 |" in markdown  # the switch table has every seed


REPORTS = [
    ("branch", "branch_32k-seed*.tgz"),
    ("scratch", "branch_32k-scratch-seed*.tgz"),
    ("branch_64k", "branch_64k-seed*.tgz"),
]


@pytest.mark.parametrize(("report", "pattern"), REPORTS)
def test_committed_report_is_what_the_archived_seeds_give(tmp_path, report, pattern):
    """bench/report/{branch,scratch,branch_64k}/README.md are built from the archived seeds in bench/report/runs/,
    never edited by hand: rebuilding one from them gives the committed text, line for line (the PNGs are left out:
    their bytes depend on the matplotlib version)."""
    archives = sorted((REPO / "bench" / "report" / "runs").glob(pattern))
    assert archives, f"no archived seeds match {pattern}"
    rebuilt = branch_report.build_report(archives, tmp_path / "report").read_text().splitlines()
    committed = (REPO / "bench" / "report" / report / "README.md").read_text().splitlines()
    assert rebuilt == committed


def readme_comparison_rows() -> dict[str, list[str]]:
    """The README's "Does it work?" table: report folder name -> the row's cells."""
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("| ") and "](bench/report/" in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].split("](bench/report/")[1].split("/")[0]] = cells
    return rows


def report_differences(report: str) -> dict[str, tuple[float, float | None, float | None, str]]:
    """A committed report's paired differences: comparison -> (mean, interval low, high, call)."""
    found = {}
    for line in (REPO / "bench" / "report" / report / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| LH - ") and len(cells) == 8 and cells[1] != "-":
            interval = re.findall(r"[-+]\d+\.\d+", cells[2])
            low, high = (float(v) for v in interval) if interval else (None, None)
            found[cells[0]] = (float(cells[1]), low, high, cells[4])
    return found


@pytest.mark.parametrize("report", [name for name, _ in REPORTS])
def test_readme_comparison_table_quotes_the_committed_reports(report):
    """Every measured LH - D / LH - E cell of the README's table is its report's mean and interval to three decimals,
    in bold exactly where the report makes a call; an estimated cell says so."""
    row = readme_comparison_rows()[report]
    measured = report_differences(report)
    for column, comparison in ((3, "LH - D"), (4, "LH - E")):
        cell = row[column]
        if "estimated" in cell:
            assert comparison not in measured, f"{report}: {comparison} is measured now; quote it"
            continue
        mean, low, high, call = measured[comparison]
        numbers = [float(v) for v in re.findall(r"[-+]\d+\.\d+", cell)]
        quoted = [mean] if low is None else [mean, low, high]
        assert len(numbers) == len(quoted), (report, cell)
        assert all(abs(a - b) <= 6e-4 for a, b in zip(numbers, quoted, strict=True)), (report, cell)
        assert cell.startswith("**") == call.startswith("LH "), (report, cell, call)


# ---- the from-scratch design: the same arms from step 0 ------------------------------------------------------------
def test_from_scratch_plan_schedules_and_folder():
    plan = branch.make_plan(800, 0, 0.625)
    assert (plan["switch_step"], plan["val_every"]) == (500, 100) and branch.from_scratch(plan)
    assert branch.schedule("LH", plan, "lighthouse") == [
        {"start": 0, "attention": "lighthouse"},
        {"start": 500, "attention": "sdpa"},
    ]
    assert branch.schedule("E", plan, "lighthouse") == [{"start": 0, "attention": "sdpa", "rescale_lr": True}]
    assert branch.schedule("D", plan, "lighthouse") == [{"start": 0, "attention": "sdpa"}]
    assert branch.folder_name("bench/configs/branch_32k.yaml", 3, 0) == "branch_32k-scratch-seed3"
    assert branch.folder_name("bench/configs/branch_32k.yaml", 3, 200) == "branch_32k-seed3"
    est = branch.estimate(800, 0, arms=("D", "LH"))
    assert set(est["train_min"]) == {"D", "LH"} and est["train_min"]["D"] == pytest.approx(800 * 131072 / 235e3 / 60)


def scratch_args(config: Path, out: Path, *extra: str) -> list[str]:
    """branch.py run of the tiny from-scratch seed 1 into ``out``."""
    args = ["run", "--config", str(config), "--out", str(out), "--seed", "1", "--warmup", "0", "--steps", str(S)]
    args += ["--eval-windows", "4", "--lookahead-windows", "2", "--no-final-recall", "--reserve-s", "0"]
    return args + ["--min-launch-minutes", "0", "--min-eval-minutes", "0", *extra]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scratch")
    with one_thread():
        config = tiny_branch_config(folder)
        out = folder / "tiny-scratch-seed1"  # seed 1: a report may then be handed it with the branch fixture's seed 0
        rc = branch.main(scratch_args(config, out), runner=in_process)
        yield SimpleNamespace(folder=folder, config=config, out=out, rc=rc)


@pytest.mark.slow
def test_from_scratch_arms_start_at_step_0_paired_by_seed(scratch):
    assert scratch.rc == 0 and (scratch.out / "DONE").exists()
    assert not (scratch.out / "warmup").exists() and not (scratch.out / "warmup_check.json").exists()
    for arm in ("D", "LH", "E"):
        assert [r["resumed_from"] for r in launches(scratch.out, arm) if r["kind"] == "fit"] == [None]
    stage = {arm: logged_scalars(scratch.out / arm, "train/stage") for arm in ("D", "LH", "E")}
    lh = stage["LH"]
    assert [lh[s] for s in sorted(lh)] == [1.0] * 10 + [2.0] * (S - 10)  # Lighthouse from step 1, dense after 10
    assert set(stage["D"].values()) == {1.0} == set(stage["E"].values())
    # Same init and data in every arm: the first step's loss is D's in E, and differs in LH only by its attention.
    first = {arm: logged_scalars(scratch.out / arm, "train/loss")[1] for arm in ("D", "LH", "E")}
    assert first["D"] == first["E"] != first["LH"]
    rule = json.loads((scratch.out / "equal_time.json").read_text())
    e = torch.load(branch.checkpoints(scratch.out / "E")[-1][1], weights_only=True, map_location="cpu")
    assert e["global_step"] == rule["e_end"] == rule["e_steps"]
    assert json.loads((scratch.out / "LH" / "final" / "lookahead.json").read_text())["step"] == 10


@pytest.mark.slow
def test_from_scratch_archive_and_report_stay_apart_from_the_branch_design(scratch, seed):
    archive = branch.export(scratch.out, scratch.folder / "archives")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    # Every arm reads the same data: only the first run's (D's) manifest is archived.
    assert [n for n in names if n.endswith("data_manifest.json")] == ["tiny-scratch-seed1/D/data_manifest.json"]
    markdown = branch_report.build_report([archive], scratch.folder / "report").read_text()
    assert markdown.startswith("# From-scratch comparison") and "early drop" not in markdown
    assert "- Plan: from scratch, every arm from step 0" in markdown and "D (dense) (0-end)" in markdown
    # --no-final-recall: recall comes from the validation at each arm's last step; E's last step (sized from the
    # measured step times) has one only where it falls on the validation cadence.
    plan = json.loads((scratch.out / "plan.json").read_text())
    e_end = json.loads((scratch.out / "equal_time.json").read_text())["e_end"]
    table = markdown.split("### Recall after recovery")[1].split("###")[0]
    rows = [r.split(" | ") for r in table.splitlines() if r.startswith("| ") and not r.startswith("| distance")]
    assert rows and all(r[1].count(" / ") == 2 and r[2].count(" / ") == 2 for r in rows)
    assert all((r[3] == "- |") == bool(e_end % plan["val_every"]) for r in rows), (e_end, rows)
    with pytest.raises(ValueError, match="different plans .*'warmup': \\(4, 0\\)"):
        branch_report.build_report([archive, branch.export(seed.out, seed.folder / "archives")], seed.folder / "r")


@pytest.mark.slow
def test_a_scratch_seed_with_d_and_lh_is_complete(scratch, tmp_path):
    """The from-scratch design is the paper's pair: a seed without E counts, and the report shows no E column."""
    pair = tmp_path / scratch.out.name
    shutil.copytree(scratch.out, pair, ignore=shutil.ignore_patterns("E", "equal_time.json"))
    markdown = branch_report.build_report([branch.export(pair, tmp_path / "archives")], tmp_path / "report").read_text()
    assert "per arm: D 1, LH 1; with every arm of the design (D, LH): 1." in markdown
    assert "Seeds without every arm" not in markdown
    assert "| seed | D | LH | LH - D |" in markdown and "E steps" not in markdown and "| LH - E |" not in markdown


@pytest.mark.slow
def test_a_scratch_seed_continues_from_its_archive_on_a_new_machine(scratch, tmp_path):
    """From-scratch seed 0 on the H200 (2026-12-03): D trained and evaluated, LH stopped at its switch, then the
    machine went with every checkpoint. Its export alone continues the seed: D stays done, LH trains again from
    step 0 in a clean folder, and the earlier attempt is kept beside it."""
    then = tmp_path / "then" / scratch.out.name
    shutil.copytree(scratch.out, then, ignore=shutil.ignore_patterns("E", "DONE", "equal_time.json"))
    shutil.rmtree(then / "LH" / "final")
    archive = branch.export(then, tmp_path / "archives")
    out = tmp_path / "now" / scratch.out.name
    exports = tmp_path / "exports"
    args = scratch_args(scratch.config, out, "--arms", "D", "LH", "--export-to", str(exports))
    with one_thread():
        assert branch.main([*args, "--resume-from", str(archive)], runner=in_process) == 0
    with tarfile.open(exports / f"{out.name}.tgz") as tar:  # written when LH was done: a later kill loses nothing
        assert f"{out.name}/LH/final/lookahead.json" in tar.getnames()
    assert launches(out, "D") == launches(scratch.out, "D")  # nothing launched for D
    assert (out / "D" / "final" / "window_losses.json").read_bytes() == (
        scratch.out / "D" / "final" / "window_losses.json"
    ).read_bytes()
    assert launches(out / "LH.attempt-1", ".") == launches(scratch.out, "LH")
    assert [(r["kind"], r["resumed_from"]) for r in launches(out, "LH")] == [
        ("fit", None),
        ("window_losses", None),
        ("lookahead", None),
    ]
    assert len(list((out / "LH").glob("events.out.tfevents.*"))) == 1  # no stale curve from the earlier attempt
    stage = logged_scalars(out / "LH", "train/stage")
    assert [stage[s] for s in sorted(stage)] == [1.0] * 10 + [2.0] * (S - 10)


@pytest.mark.slow
def test_an_arm_whose_probe_went_with_its_machine_is_done_and_its_probe_unmeasured(scratch, tmp_path, capsys):
    """From-scratch seed 1 on the H200 (2026-12-03): D and LH trained and got their window losses, the call ended
    before LH's look-ahead probe, and the next call found a fresh machine. The archive continues the seed with
    nothing to train (training LH again for its probe would cost a whole arm and give another realization of it),
    and the report shows the probe as not measured."""
    then = tmp_path / "then" / scratch.out.name
    shutil.copytree(scratch.out, then, ignore=shutil.ignore_patterns("E", "DONE", "equal_time.json"))
    (then / "LH" / "final" / "lookahead.json").unlink()
    archive = branch.export(then, tmp_path / "archives")
    launched = []
    args = scratch_args(scratch.config, tmp_path / "now" / then.name, "--arms", "D", "LH")
    capsys.readouterr()
    assert branch.main([*args, "--resume-from", str(archive)], runner=lambda a, log: launched.append(a) or 1) == 0
    assert launched == []
    said = capsys.readouterr().out
    assert "LH's look-ahead probe is not measured: its switch checkpoint went with its machine" in said
    markdown = branch_report.build_report([archive], tmp_path / "report").read_text()
    assert (
        "per arm: D 1, LH 1; with every arm of the design (D, LH): 1." in markdown
        and "| 1 | LH | - | - | - | - | - | - |" in markdown
    )
    assert "A row of '-': not measured" in markdown


@pytest.mark.slow
def test_a_failed_probe_runs_again_while_its_switch_checkpoint_is_there(scratch, tmp_path):
    """On a live folder the switch checkpoint is kept until the probe has run: a probe that failed is retried by the
    same command, not given up as lost."""

    def probe_fails(args: list[str], log: Path) -> int:
        return 1 if args[:2] == ["-m", "lighthouse.eval.lookahead"] else in_process(args, log)

    out = tmp_path / scratch.out.name
    args = scratch_args(scratch.config, out, "--arms", "LH")
    with one_thread():
        assert branch.main(args, runner=probe_fails) == 1
        assert (out / "LH" / "final" / "window_losses.json").exists()
        assert branch.checkpoint_at(out / "LH", 10) is not None  # the switch, kept for the probe
        assert branch.main(args, runner=in_process) == 0
    assert [r["kind"] for r in launches(out, "LH")] == ["fit", "window_losses", "lookahead", "lookahead"]
    assert json.loads((out / "LH" / "final" / "lookahead.json").read_text())["step"] == 10
    assert [s for s, _ in branch.checkpoints(out / "LH")] == [S]  # probed: the switch checkpoint is gone


def archive_with_pending(
    seed, tmp_path: Path, fingerprint: str | None, arm: str = "D", device: str | None = "cpu"
) -> Path:
    """The tiny seed's export with ``arm`` trained but not evaluated (so it branches from the warm-up again: its
    checkpoints stay behind) and its warm-up fingerprint replaced (``fingerprint``) or, None, removed (a folder from
    before the deterministic warm-up), recorded on ``device`` (None: no device in the record, as before
    2026-12-05, when the seed's plan named it)."""
    copy = tmp_path / "copy" / seed.out.name
    shutil.copytree(seed.out, copy)
    shutil.rmtree(copy / arm / "final")
    record = copy / "warmup_fingerprint.json"
    if fingerprint is None:
        record.unlink()
    else:
        fields = {**json.loads(record.read_text()), "sha256": fingerprint, "device": device}
        record.write_text(json.dumps({k: v for k, v in fields.items() if v is not None}))
    return branch.export(copy, tmp_path / "archives")


@pytest.mark.slow
def test_a_lost_warmup_is_trained_again_and_arms_branch_only_from_a_bitwise_equal_one(seed, tmp_path, capsys):
    recorded = json.loads((seed.out / "warmup_fingerprint.json").read_text())["sha256"]
    out = tmp_path / "new" / seed.out.name
    with one_thread():
        assert run_seed(seed.config, out, 0, "--resume-from", str(archive_with_pending(seed, tmp_path, recorded))) == 0
    said = capsys.readouterr().out
    assert "the warm-up's checkpoint is gone; training it again and checking its fingerprint" in said
    # The archived warm-up's files are set aside; the warm-up trains from step 0 in one go, ends bitwise equal to
    # the one that went (stopped after step 1 and resumed), and D branches from it again.
    assert launches(out, "warmup.attempt-1") == launches(seed.out, "warmup")
    assert [(r["kind"], r["resumed_from"]) for r in launches(out, "warmup")] == [("fit", None)]
    assert branch.fingerprint(branch.checkpoint_at(out / "warmup", W)) == recorded
    assert [(r["kind"], r["resumed_from"]) for r in launches(out, "D")][0] == ("fit", W)  # D's new start
    assert (out / "D" / "final" / "window_losses.json").exists()

    other = tmp_path / "other" / seed.out.name
    with one_thread():
        archive = archive_with_pending(seed, tmp_path / "other-archive", "0" * 64)
        assert run_seed(seed.config, other, 0, "--resume-from", str(archive)) == branch.BAD_FOLDER
    said = capsys.readouterr().out
    assert "the warm-up trained again differs from the recorded one" in said and "; recorded on" not in said
    assert launches(other, "D") == launches(seed.out, "D")  # D did not train

    # Recorded on another GPU model (a seed started on an H200, continued on an H100): both are named, on starting
    # the warm-up again and on a mismatch.
    elsewhere = tmp_path / "elsewhere" / seed.out.name
    with one_thread():
        archive = archive_with_pending(seed, tmp_path / "elsewhere-archive", "0" * 64, device="NVIDIA H200")
        assert run_seed(seed.config, elsewhere, 0, "--resume-from", str(archive)) == branch.BAD_FOLDER
    said = capsys.readouterr().out
    assert "checking its fingerprint; recorded on NVIDIA H200, trained again on cpu\n" in said
    assert "recorded 0000000000000000; recorded on NVIDIA H200, trained again on cpu): its arms" in said


@pytest.mark.slow
def test_an_equal_time_arm_trained_but_not_evaluated_trains_again_from_a_rederived_warmup(seed, tmp_path, capsys):
    # Branch seed 4, 2026-12-04: E reached its end step on a machine that went before E's evaluation ran.
    recorded = json.loads((seed.out / "warmup_fingerprint.json").read_text())["sha256"]
    out = tmp_path / "new" / seed.out.name
    with one_thread():
        archive = archive_with_pending(seed, tmp_path, recorded, arm="E")
        assert run_seed(seed.config, out, 0, "--resume-from", str(archive), "--no-final-recall") == 0
    said = capsys.readouterr().out
    assert "done: D LH LHc" in said and "E has files but no checkpoint" in said
    assert branch.fingerprint(branch.checkpoint_at(out / "warmup", W)) == recorded
    for arm in ("D", "LH"):  # evaluated arms keep their records and do not train again
        assert launches(out, arm) == launches(seed.out, arm)
    # E's first attempt is kept aside; E trains again from W to the end step of the recorded equal-time rule.
    assert launches(out, "E.attempt-1") == launches(seed.out, "E")
    end = json.loads((out / "equal_time.json").read_text())["e_end"]
    assert [(r["kind"], r["resumed_from"]) for r in launches(out, "E")] == [("fit", W), ("window_losses", None)]
    assert branch.checkpoints(out / "E")[-1][0] == end and (out / "DONE").exists()
    # The report compares both set-aside runs with their second realization; on one CPU thread training is
    # deterministic, so E's two realizations read the same at every common validation, as the warm-up's do.
    table = branch_report.realization_table(branch_seeds.load_seeds([out], tmp_path / "unpacked"))
    rows = [r.split(" | ") for r in table if r.startswith("| 0 |")]
    assert [r[1:3] for r in rows] == [["warmup", "1"], ["E", "1"]]
    assert all(int(r[3]) >= 2 and r[7] == "+0.0000" for r in rows), rows


@pytest.mark.slow
def test_a_branch_seed_without_a_fingerprint_refuses_to_train_an_arm_once_its_warmup_is_gone(seed, tmp_path, capsys):
    out = tmp_path / "new" / seed.out.name
    archive = archive_with_pending(seed, tmp_path, None)
    assert run_seed(seed.config, out, 0, "--resume-from", str(archive)) == branch.BAD_FOLDER
    assert "its run was not deterministic (no fingerprint)" in capsys.readouterr().out
    assert launches(out, "warmup") == launches(seed.out, "warmup") and (out / "warmup").is_dir()


def test_resume_from_names_what_is_wrong_with_the_archive(tmp_path, capsys):
    config = str(REPO / "bench" / "configs" / "branch_32k.yaml")
    base = ["run", "--config", config, "--out", str(tmp_path / "branch_32k-seed0")]
    assert branch.main([*base, "--resume-from", str(tmp_path / "none.tgz")], runner=None) == branch.BAD_FOLDER
    assert "none.tgz: no such archive" in capsys.readouterr().err
    other = tmp_path / "other-seed5"
    (other / "D").mkdir(parents=True)
    archive = branch.export(other, tmp_path)
    assert branch.main([*base, "--resume-from", str(archive)], runner=None) == branch.BAD_FOLDER
    assert "holds ['other-seed5'], not the seed folder branch_32k-seed0" in capsys.readouterr().err
    assert not (tmp_path / "branch_32k-seed0").exists()


def test_an_archive_without_a_finished_arm_starts_the_seed_afresh(tmp_path, capsys):
    """A call cut off inside the first arm leaves an archive with a warm-up and half an arm but no checkpoint: the
    next machine starts the seed again instead of refusing the folder (2026-12-03, branch_32k seed 4)."""
    config = str(REPO / "bench" / "configs" / "branch_32k.yaml")
    cut = tmp_path / "cut" / "branch_32k-seed4"
    for run in ("warmup", "D"):
        (cut / run).mkdir(parents=True)
        (cut / run / "launches.jsonl").write_text('{"kind": "fit"}\n')
    archive = branch.export(cut, tmp_path)
    out = tmp_path / "logs" / cut.name
    asked = []

    def stop_at_first_job(args: list[str], log: Path) -> int:
        asked.append(args)
        return 1

    base = ["run", "--config", config, "--out", str(out), "--seed", "4", "--resume-from", str(archive)]
    assert branch.main(base, runner=stop_at_first_job) == 1
    said = capsys.readouterr().out
    assert "done: no arm" in said and "no finished arm to keep; seed 4 starts afresh" in said
    assert "warm-up's checkpoint is gone" not in said
    assert len(asked) == 1 and asked[0][0] == "src/train.py"  # the warm-up's fit, from step 0
    assert not (out / "D").exists() and archive.is_file()


# ---- bench/device_round.sh: the device calls around branch.py and compare.py ---------------------------------------
def device_round(root: Path, part: str, *args: str) -> list[str]:
    """``bench/device_round.sh PART ARGS`` run from ``root`` (a copy of the script; a ``python3`` on PATH that only
    records its arguments): the arguments it gave ``bench/<part>.py``, from ``run`` on."""
    (root / "bench").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "bench" / "device_round.sh", root / "bench")
    fake = root / "bin" / "python3"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\necho "$@" >>"$CALLS"\n')
    fake.chmod(0o755)
    calls = root / "calls.txt"
    calls.unlink(missing_ok=True)
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "CALLS": str(calls), "OUT": str(root / "out")}
    done = subprocess.run(["bash", "bench/device_round.sh", part, *args], cwd=root, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    script = f"bench/{part}.py run"
    return next(line for line in calls.read_text().splitlines() if line.startswith(script)).split()[1:]


def test_device_round_resumes_a_seed_from_its_saved_archive(tmp_path):
    """The same command continues a seed on a fresh machine once the last call's archive is saved under
    bench/report/runs/partial/ (2026-12-03: a third call without it trained D again from step 0), and always asks
    branch.py for an export after each finished arm."""
    args = ("bench/configs/branch_32k.yaml", "--seed", "9", "--warmup", "0", "--arms", "D", "LH")
    run = device_round(tmp_path, "branch", *args)
    assert "--resume-from" not in run and run[run.index("--export-to") + 1] == str(tmp_path / "out")
    assert run[run.index("--out") + 1] == "logs/branch_32k-scratch-seed9"
    saved = tmp_path / "bench" / "report" / "runs" / "partial" / "branch_32k-scratch-seed9.tgz"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"")
    run = device_round(tmp_path, "branch", *args)
    assert run[run.index("--resume-from") + 1] == "bench/report/runs/partial/branch_32k-scratch-seed9.tgz"
    run = device_round(tmp_path, "branch", *args, "--resume-from", "elsewhere.tgz")  # one given is kept, alone
    assert run.count("--resume-from") == 1 and run[run.index("--resume-from") + 1] == "elsewhere.tgz"
    run = device_round(tmp_path, "branch", "bench/configs/branch_32k.yaml", "--seed", "9")  # branch design's seed 9
    assert "--resume-from" not in run
    run = device_round(tmp_path, "branch", *args, "--", "--trainer.deterministic", "false")
    parsed = branch.parse_args(run)  # the archive is branch.py's, the overrides train.py's
    assert parsed.resume_from == str(saved.relative_to(tmp_path)) and parsed.extra == [
        "--trainer.deterministic",
        "false",
    ]


def test_device_round_gives_each_script_only_arguments_it_takes(tmp_path):
    """What the device calls pass on must parse: an option one script gained, given to the other, would end the
    call with an argparse error, found only on the device."""
    run = device_round(tmp_path, "branch", "bench/configs/branch_32k.yaml", "--seed", "0", "--steps", "800")
    assert branch.parse_args(run).command == "run"
    run = device_round(tmp_path, "compare", "bench/configs/compare_32k.yaml", "--seeds", "1", "2", "--steps", "320")
    assert compare.parse_args(run).command == "run"
