"""Multi-GPU checks through the real entry point (run on a machine with 2 GPUs):

    PYTHONPATH=src python bench/multi_gpu_check.py --out results/       # all checks, table printed last
    PYTHONPATH=src python bench/multi_gpu_check.py --only fsdp-curves   # some groups: ddp-curves fsdp-curves
                                                                        # scaling fsdp-resume

*-curves     same global batch on 1 and on 2 GPUs (DDP and FSDP): train/loss of the first 20 steps, max difference
scaling      tokens/s of configs/lh_64k.yaml on 2 GPUs (DDP) over 1 GPU
fsdp-resume  a sharded FSDP checkpoint written on 2 GPUs resumes on 1, and one written on 1 resumes on 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lighthouse.eval.run_logs import read_run

REPO = Path(__file__).resolve().parents[1]

SMALL = [
    "--config",
    "configs/demo.yaml",
    "--trainer.val_check_interval",
    "1000",
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.log_every_n_steps",
    "1",
]
FSDP = ["--config", "configs/strategy/fsdp.yaml"]


def train(out: Path, name: str, args: list[str], devices: int) -> tuple[int, float]:
    """Run one training job; returns (exit code, seconds)."""
    cmd = [
        sys.executable,
        "src/train.py",
        "fit",
        *args,
        "--trainer.devices",
        str(devices),
        "--trainer.logger.init_args.save_dir",
        str(out / "logs"),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.logger.init_args.version",
        "",
    ]  # one folder per name: <out>/logs/<name>/
    start = time.time()
    with open(out / f"{name}.log", "a") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    return code, time.time() - start


def losses(out: Path, name: str) -> dict[int, float]:
    return read_run(out / "logs" / name).series("train/loss").as_dict()


def max_diff(a: dict[int, float], b: dict[int, float]) -> float:
    common = sorted(set(a) & set(b))
    return max(abs(a[s] - b[s]) for s in common) if common else float("nan")


def curves(out: Path, rows: list, label: str) -> None:
    steps = ["--trainer.max_steps", "20"]
    one_gpu = [] if label == "ddp" else FSDP  # DDP on one GPU is plain training; FSDP is compared with itself
    two_gpus = ["--trainer.strategy", "ddp"] if label == "ddp" else FSDP
    code1, _ = train(out, f"{label}_1gpu", [*SMALL, *steps, "--data.batch_size", "2", *one_gpu], 1)
    code2, _ = train(out, f"{label}_2gpu", [*SMALL, *steps, "--data.batch_size", "1", *two_gpus], 2)
    a, b = losses(out, f"{label}_1gpu"), losses(out, f"{label}_2gpu")
    rows.append(
        {
            "check": f"{label} curves 1 vs 2 GPUs",
            "exit": [code1, code2],
            "steps": len(set(a) & set(b)),
            "max_abs_diff": max_diff(a, b),
            "loss_first_last": [a.get(1), a.get(20)],
        }
    )


def scaling(out: Path, rows: list) -> None:
    args = [
        "--config",
        "configs/lh_64k.yaml",
        "--config",
        "bench/configs/two_stage_smoke.yaml",
        "--trainer.max_steps",
        "14",
        "--model.compile",
        "false",
    ]
    rates = {}
    for devices in (1, 2):
        name = f"scaling_{devices}gpu"
        code, _ = train(out, name, [*args, *([] if devices == 1 else ["--trainer.strategy", "ddp"])], devices)
        records = [json.loads(x) for x in (out / "logs" / name / "throughput.jsonl").read_text().splitlines()]
        rates[devices] = records[-1]["tokens_per_sec"]
        rows.append({"check": f"lh_64k tokens/s on {devices} GPU(s)", "exit": code, "tokens_per_sec": rates[devices]})
    rows.append({"check": "scaling 2 GPUs / 1 GPU", "ratio": rates[2] / rates[1]})


def fsdp_resume(out: Path, rows: list) -> None:
    for first, second in ((2, 1), (1, 2)):
        name = f"fsdp_resume_{first}to{second}"
        code1, _ = train(out, name, [*SMALL, *FSDP, "--trainer.max_steps", "6"], first)
        ckpt = out / "logs" / name / "checkpoints" / "last.ckpt"
        code2, _ = train(out, name, [*SMALL, *FSDP, "--trainer.max_steps", "10", "--ckpt_path", str(ckpt)], second)
        steps = sorted(losses(out, name))
        rows.append(
            {
                "check": f"FSDP checkpoint {first} GPU(s) -> {second}",
                "exit": [code1, code2],
                "sharded_dir": ckpt.is_dir(),
                "steps_logged": [steps[0], steps[-1]] if steps else None,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")) / "multi_gpu")
    parser.add_argument("--only", nargs="+", choices=["ddp-curves", "fsdp-curves", "scaling", "fsdp-resume"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list = []
    groups = {
        "ddp-curves": lambda out, rows: curves(out, rows, "ddp"),
        "fsdp-curves": lambda out, rows: curves(out, rows, "fsdp"),
        "scaling": scaling,
        "fsdp-resume": fsdp_resume,
    }
    for name, fn in groups.items():
        if args.only is None or name in args.only:
            try:
                fn(args.out, rows)
            except Exception as err:  # keep going: one failed group must not hide the others' results
                rows.append({"check": name, "error": repr(err)})
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(json.dumps(r) for r in rows))


if __name__ == "__main__":
    main()
