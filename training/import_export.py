"""``python -m training.import_export``: now :mod:`correction_loop.import_export`."""

from correction_loop.import_export import main

if __name__ == "__main__":
    raise SystemExit(main())
