"""``devft-lab flower ...``: run a workload on Flower (simulation, loopback, or your own SuperLink).

    flower sim        --nodes N --out DIR [--workload W] [--config C] [--set k=v ...]
    flower local      same, with a real SuperLink and N SuperNodes on 127.0.0.1
    flower app-dir    DIR                   the Flower App directory for ``flwr run DIR <superlink>``
    flower run-config --out DIR -o FILE     the ``--run-config FILE`` for that ``flwr run``

Workloads: ``devft`` (default: the DevFT schedule of a ``devft-lab run`` config) and ``dummy``
(a transport check; ``--set`` keys are its settings). For ``devft`` the YAML config is
resolved here, with ``--set`` dotted overrides, and travels to the clients as JSON, so
clients need no config files. Exposed as :func:`main` for the top-level CLI.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import tomli_w
import yaml

from devft_lab.flower.deploy import LocalFederation, write_app_dir
from devft_lab.flower.server_app import ServerOptions
from devft_lab.flower.simulate import run_simulation
from devft_lab.flower.workload import WorkloadSpec, build_workload
from devft_lab.runner.config import load_config, to_dict


def workload_spec(workload: str, config: str | None, overrides: Sequence[str]):
    """The :class:`WorkloadSpec` named on the command line."""
    if workload == "dummy":
        settings: dict[str, Any] = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected key=value")
            settings[key.strip()] = yaml.safe_load(value)
        return WorkloadSpec("dummy", settings)

    cfg = load_config(config or "tiny", overrides=list(overrides))
    return WorkloadSpec(workload, {"config": to_dict(cfg)})


#: defaults of the transport settings; a run config may set them as ``fed.min_fit`` and
#: ``fed.round_timeout`` (read when the config schema has them), the flags override both
DEFAULTS = {"min_fit": 1, "round_timeout": 120.0}


def _options(args: argparse.Namespace):
    spec = workload_spec(args.workload, args.config, args.set or [])
    fed = spec.settings.get("config", {}).get("fed", {}) if spec.name == "devft" else {}
    pick = {k: getattr(args, k) if getattr(args, k) is not None else fed.get(k, v) for k, v in DEFAULTS.items()}
    return ServerOptions(spec, str(Path(args.out).resolve()), min_fit=int(pick["min_fit"]),
                         round_timeout=float(pick["round_timeout"]), node_timeout=args.node_timeout,
                         num_nodes=args.nodes or 0)


def _summary(report: dict[str, Any]) -> str:
    lines = [f"{len(report['rounds'])} rounds in {report['seconds']:.1f} s; "
             f"down {report['bytes_down']:,} B, up {report['bytes_up']:,} B"]
    for d in report["dropouts"]:
        lines.append(f"  round {d['round']}: client {d['client']} dropped ({d['reason']})")
    for k, v in report.get("summary", {}).items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)


def _cmd_sim(args: argparse.Namespace) -> int:
    report = run_simulation(_options(args), num_supernodes=args.nodes, num_cpus=args.cpus, verbose=args.verbose)
    print(_summary(report))
    print(f"report: {Path(args.out) / 'run.json'}; final state: {Path(args.out) / 'final_state.safetensors'}")
    return 0


def _cmd_local(args: argparse.Namespace) -> int:
    opts = _options(args)
    nodes = args.nodes or _num_clients(opts.spec)
    workdir = Path(args.out).resolve() / "federation"
    with LocalFederation(nodes, workdir=workdir, tls=args.tls or args.node_auth, node_auth=args.node_auth) as fed:
        report = fed.run(opts, timeout=args.timeout)
    print(_summary(report))
    print(f"report: {Path(args.out) / 'run.json'}; process logs: {workdir}")
    return 0


def _num_clients(spec) -> int:
    return build_workload(spec).num_clients


def _cmd_app_dir(args: argparse.Namespace) -> int:
    path = write_app_dir(args.dir)
    print(f"wrote {path / 'pyproject.toml'}; run it with: flwr run {path} <superlink> --run-config <file>")
    return 0


def _cmd_run_config(args: argparse.Namespace) -> int:
    text = tomli_w.dumps(_options(args).to_run_config())
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0


def _add_run_args(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    p.add_argument("--workload", default="devft", choices=["devft", "dummy"])
    p.add_argument("--config", default=None, help="shipped config name or YAML path (devft; default tiny)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override (repeatable)")
    p.add_argument("--out", required=out_required, help="directory for run.json and final_state.safetensors")
    p.add_argument("--nodes", type=int, default=None, help="SuperNodes (default: data.num_clients)")
    p.add_argument("--min-fit", type=int, default=None,
                   help="fewest replies a round aggregates (default: fed.min_fit if the config has it, else 1)")
    p.add_argument("--round-timeout", type=float, default=None,
                   help="seconds to wait for a round's replies (default: fed.round_timeout, else 120)")
    p.add_argument("--node-timeout", type=float, default=120.0,
                   help="seconds to wait for --nodes SuperNodes to connect")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="devft-lab flower", description="DevFT and baselines on Flower.")
    sub = p.add_subparsers(dest="flower_command", required=True)
    s = sub.add_parser("sim", help="Flower Simulation Engine (Ray), in this process")
    _add_run_args(s)
    s.add_argument("--cpus", type=int, default=1, help="CPUs Ray may use")
    s.add_argument("--verbose", action="store_true")
    s.set_defaults(func=_cmd_sim)
    lo = sub.add_parser("local", help="real SuperLink + SuperNodes on 127.0.0.1, then flwr run")
    _add_run_args(lo)
    lo.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    lo.add_argument("--tls", action="store_true", help="HTTPS with a throw-away CA instead of --insecure")
    lo.add_argument("--node-auth", action="store_true", help="SuperNode authentication (implies --tls)")
    lo.set_defaults(func=_cmd_local)
    a = sub.add_parser("app-dir", help="write the Flower App directory for flwr run")
    a.add_argument("dir")
    a.set_defaults(func=_cmd_app_dir)
    r = sub.add_parser("run-config", help="write the --run-config TOML for flwr run")
    _add_run_args(r)
    r.add_argument("-o", "--output", default="-", help="file (default: stdout)")
    r.set_defaults(func=_cmd_run_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``devft-lab flower <command> ...`` (returns the exit status)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"devft-lab flower: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
