"""``python -m training versions | history | promote V | rollback``: the head registry's command
line, now :mod:`correction_loop.registry_cli`."""

from correction_loop.registry_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
