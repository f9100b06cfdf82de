"""Inspect and steer the head registry: ``python -m training versions | promote V | rollback``.

The files under ``MODEL_DIR/heads`` are the truth. With Redis (``--redis-url``, or the embedded
server when ``MODEL_DIR/redis/`` exists) running backends hear of a promotion at
once; without it they pick it up on their next poll of the registry.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from correction_loop.head_files import HeadVersion
    from correction_loop.registry import ModelRegistry

KEY_METRICS = ("pixel_auroc", "aupro", "image_auroc")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The registry loads torch (head files): only after the arguments parse, so --help is quick.
    from correction_loop.head_files import RegistryError, UnknownVersionError
    from correction_loop.registry import ModelRegistry

    model_dir = Path(args.model_dir)
    try:
        if args.command == "versions":  # reading needs no Redis
            return _versions(ModelRegistry(model_dir), args.json)
        if args.command == "history":
            return _history(ModelRegistry(model_dir), args.json)
        return _change(args, ModelRegistry(model_dir, _redis(args.redis_url, model_dir)))
    except UnknownVersionError as exc:
        print(f"error: {exc}; see `python -m training versions`", file=sys.stderr)
        return 2
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="List, promote and roll back the trained heads in the model registry.",
    )
    parser.add_argument(
        "--model-dir",
        default=os.environ.get("MODEL_DIR") or "./model_dir",
        help="folder holding heads/ (default: $MODEL_DIR or ./model_dir)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or None,
        help="Redis to announce promotions on (default: $REDIS_URL, else the embedded server "
        "if MODEL_DIR/redis/ exists, else none)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    versions = sub.add_parser("versions", help="list registered heads; * marks the serving one")
    versions.add_argument("--json", action="store_true", help="machine-readable output")
    history = sub.add_parser("history", help="every register/promote/reject/rollback so far")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    promote = sub.add_parser("promote", help="serve VERSION from now on")
    promote.add_argument("version", metavar="VERSION")
    promote.add_argument("--reason", default="promoted by hand", help="recorded in the history")
    promote.add_argument(
        "--allow-backbone-change",
        action="store_true",
        help="serve a head trained for another backbone than the serving head's (only after "
        "switching the backends to that backbone)",
    )
    sub.add_parser("rollback", help="undo the last promotion (down to the training-free head)")
    return parser


def _redis(url: str | None, model_dir: Path) -> redis.Redis | None:
    """A live client for ``url`` or the existing embedded server; None when there is none."""
    from correction_loop.redis_conn import connect, embedded_path

    if not url and not embedded_path(model_dir).parent.is_dir():
        return None
    try:
        client = connect(url, model_dir)
        client.ping()
    except Exception as exc:
        print(f"note: Redis unavailable ({exc}); the registry files stay the truth")
        return None
    return client


def _change(args: argparse.Namespace, registry: ModelRegistry) -> int:
    if args.command == "promote":
        head = registry.promote(
            args.version, args.reason, allow_backbone_change=args.allow_backbone_change
        )
        print(f"serving {head.version} ({args.reason})")
    else:
        before = registry.serving()
        if before is None:
            print("nothing to roll back: the training-free head is serving")
            return 0
        after = registry.rollback()
        now = after.version if after else "the training-free head"
        print(f"rolled back {before.version}; now serving {now}")
    if registry.redis is None:
        print("note: no Redis; running backends pick the change up on their next registry poll")
    return 0


def _versions(registry: ModelRegistry, as_json: bool) -> int:
    heads = registry.versions()
    serving = registry.serving()
    current = serving.version if serving else None
    if as_json:
        rows = [{**_jsonable(h), "serving": h.version == current} for h in heads]
        print(json.dumps({"serving": current, "versions": rows}, indent=2))
        return 0
    header = ["", "version", "status", "created", *KEY_METRICS, "parent", "reason"]
    table = [header] + [_row(h, h.version == current) for h in heads]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    print(f"serving: {current or 'the training-free head'}")
    if serving is not None:
        problem = _serving_problem(serving)
        if problem:
            print(f"warning: the serving head fails its check ({problem}); backends serve the "
                  "last good head instead (see /health)")  # fmt: skip
    return 0


def _serving_problem(head: HeadVersion) -> str | None:
    """Why the serving head would not load (a file damaged after its promotion), or None."""
    from clipsam.heads import HeadLoadError
    from training.head_check import HeadCheckError, check_head_file

    try:
        check_head_file(head.path, head.backbone_id or None)
    except (HeadCheckError, HeadLoadError) as exc:
        return str(exc)
    return None


def _history(registry: ModelRegistry, as_json: bool) -> int:
    entries = registry.history()
    if as_json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        was = f" (was {e['previous'] or 'training-free'})" if "previous" in e else ""
        version = e.get("version") or "training-free"
        print(f"{e.get('time', '?')}  {e.get('action', '?'):<8}  {version}{was}: {e.get('reason')}")
    return 0


def _row(head: HeadVersion, serving: bool) -> list[str]:
    metrics = [f"{head.metrics[k]:.4f}" if k in head.metrics else "-" for k in KEY_METRICS]
    created = head.created[:19].replace("T", " ")
    return ["*" if serving else "", head.version, head.status, created, *metrics,
            head.parent or "-", head.reason]  # fmt: skip


def _jsonable(head: HeadVersion) -> dict[str, Any]:
    data = head.to_dict()
    data["metrics"] = {k: None if math.isnan(v) else v for k, v in head.metrics.items()}
    return data


if __name__ == "__main__":
    sys.exit(main())
