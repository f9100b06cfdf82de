"""Every Redis name the loop and pre-labelling use: keys, the promotion channel, rq queues.

Keys start with a prefix (``clipsam``; a store or registry made with another prefix keeps to
its own keys). What each holds:

``{prefix}:correction:{annotation_id}``
    string: one :class:`~correction_loop.corrections.Correction` as canonical JSON.
``{prefix}:project:{project}:corrections``
    set of the annotation ids stored for a project (what the trainer reads).
``{prefix}:projects``
    set of every project id that ever had a correction.
``{prefix}:project:{project}:pending``
    integer: corrections upserted or deleted since the last retraining took them in.
``{prefix}:corrections:stream``
    stream with one entry per real change (``action``, ``annotation_id``, ``project``).
``{prefix}:project:{project}:retrain_requested``
    set while a START_TRAINING request waits for the project's running job to end.
``{prefix}:project:{project}:last_retrain``
    when the project's last retrain was queued (the interval policy).
``{prefix}:project:{project}:retrain_alive``
    the running job's heartbeat, expiring two periods after its last beat.
``{prefix}:serving_head``
    ``{"version", "path"}`` of the serving head (the registry's pointer file stays the truth).
``{prefix}:head_promotions``
    pub/sub channel: every promotion and rollback, for the backends' hot reload.
``{prefix}:head_blob:{version}``
    a promoted head's file, for backends on machines without the registry's MODEL_DIR.

rq queues: :data:`RETRAIN_QUEUE` (one job per project at a time, id :func:`retrain_job_id`)
and :data:`PRELABEL_QUEUE` (chunks of ``python -m backend.prelabel --workers N``).
"""

from __future__ import annotations

PREFIX = "clipsam"
RETRAIN_QUEUE = "clipsam-retrain"
PRELABEL_QUEUE = "clipsam-prelabel"


# -- corrections store ---------------------------------------------------------------------------
def correction(annotation_id: int, prefix: str = PREFIX) -> str:
    return f"{prefix}:correction:{int(annotation_id)}"


def project_corrections(project: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:project:{project}:corrections"


def pending(project: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:project:{project}:pending"


def projects(prefix: str = PREFIX) -> str:
    return f"{prefix}:projects"


def corrections_stream(prefix: str = PREFIX) -> str:
    return f"{prefix}:corrections:stream"


# -- retraining ----------------------------------------------------------------------------------
def retrain_requested(project: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:project:{project}:retrain_requested"


def last_retrain(project: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:project:{project}:last_retrain"


def retrain_alive(project: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:project:{project}:retrain_alive"


def retrain_job_id(project: str) -> str:
    """The rq job id of a project's retrain: one queued or running per project."""
    return f"retrain-{project}"


# -- head registry -------------------------------------------------------------------------------
def serving_head(prefix: str = PREFIX) -> str:
    return f"{prefix}:serving_head"


def head_promotions(prefix: str = PREFIX) -> str:
    """The pub/sub channel of promotions and rollbacks."""
    return f"{prefix}:head_promotions"


def head_blob(version: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:head_blob:{version}"
