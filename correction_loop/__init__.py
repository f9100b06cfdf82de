"""The correction loop: what people fix in Label Studio comes back as a better head.

Webhook events are written ahead to a log (:mod:`~correction_loop.events`) and pumped into the
corrections store in Redis (:mod:`~correction_loop.corrections`, :mod:`~correction_loop.store`;
:mod:`~correction_loop.import_export` for exports); the scheduler
(:mod:`~correction_loop.scheduler`) queues a retrain job (:mod:`~correction_loop.retrain`) that
a worker runs
(:mod:`~correction_loop.worker`); the registry (:mod:`~correction_loop.registry`) keeps every
head, promotes one by its rule, and announces it; every backend process hot-reloads it
(:mod:`~correction_loop.reloader`). :mod:`~correction_loop.loop` wires it all inside a backend
process. Every Redis key, channel and queue name is in :mod:`~correction_loop.keys`.

It sits on ``training`` (the offline ML), ``labelstudio`` and ``clipsam``; the backend sits on it.
"""
