"""`jnet sweep` (the quality/speed grid) and `jnet demo` (the whole pipeline on built-in data)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train, evaluate and bench a grid of models x input sizes x seeds",
                       description="Run (or resume) a sweep: every cell trains, evaluates and benches; "
                                   "finished cells are skipped. Writes results.csv/.md, plots and report.md.")
    p.add_argument("--config", required=True,
                   help="sweep YAML, or a built-in name such as sweeps/heads (`jnet config list`)")
    p.add_argument("--out", required=True, help="sweep directory (re-run to resume)")
    p.add_argument("--data", help="prepared slice cache (overrides the sweep's data.path)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides of the sweep file, e.g. seeds=[0] overrides=[train.epochs=5]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("running cells as jobs (submitit)")
    g.add_argument("--launcher", choices=("none", "local", "slurm"), default="none",
                   help="none: here, one after another (default); local: parallel processes on this "
                        "machine; slurm: one SLURM job per cell")
    g.add_argument("--max-parallel", type=int, default=1, metavar="N", help="cells running at once")
    g.add_argument("--partition", default=None, help="SLURM partition")
    g.add_argument("--gpus-per-node", type=int, default=0, metavar="G", help="GPUs per SLURM job")
    g.add_argument("--time", type=int, default=240, metavar="MIN", help="time limit per job (minutes)")
    g.add_argument("--cpus-per-task", type=int, default=None, metavar="C",
                   help="CPU threads per job (default: local cores / --max-parallel; slurm 4)")
    p.set_defaults(func=_sweep)

    d = sub.add_parser("demo", help="the main job on built-in synthetic data: synth, prepare, sweep, export, predict, report",
                       description="Synthesise a brain MRI dataset (white matter labelled), prepare it, train baseline and J-Net at "
                                   "16 and 32 (and the base at 64), export the best J-Net to ONNX, predict one "
                                   "volume and write report.md. No data or downloads needed.")
    d.add_argument("--out", default="jnet-demo", help="output directory (default: ./jnet-demo)")
    d.add_argument("--quick", action="store_true", help="a tiny version that finishes in about 2 minutes")
    d.add_argument("--overwrite", action="store_true", help="replace an existing demo directory")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)


def _sweep(args: argparse.Namespace) -> int:
    from jnet.experiments.launch import LaunchOptions
    from jnet.experiments.sweep import run_sweep
    from jnet.training.presets import locate

    launch = LaunchOptions(args.launcher, args.max_parallel, args.partition, args.gpus_per_node,
                           args.time, args.cpus_per_task).check()
    report = run_sweep(locate(args.config), args.out, data=args.data, overrides=args.overrides,
                       quiet=args.quiet, launch=launch)
    print(f"report: {report}")
    print((report.parent / "results.md").read_text())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from jnet.experiments.demo import run_demo

    report = run_demo(args.out, quick=args.quick, overwrite=args.overwrite, quiet=args.quiet)
    print(f"\nreport: {report}")
    return 0
