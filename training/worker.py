"""``python -m training.worker``: the rq worker, now :mod:`correction_loop.worker`."""

from correction_loop.worker import main

if __name__ == "__main__":
    raise SystemExit(main())
