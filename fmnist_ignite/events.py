"""Events of a run beyond Ignite's own, fired on the trainer."""

from __future__ import annotations

from ignite.engine import EventEnum


class RunEvents(EventEnum):
    """Moments of a run that Ignite's engine does not know about.

    ``RUN_FINISHED`` fires on the trainer once, after the test evaluation, when ``model.pt``,
    ``report.json`` and the pictures are written and just before ``metrics.json`` marks the run as
    finished. ``trainer.state.results`` then holds ``metrics`` (what ``metrics.json`` will hold),
    ``report`` (``report.json``) and ``figures`` (name -> path of each picture). A handler that
    fails here leaves the run unfinished and resumable. It fires also when a resumed run only had
    its end left to do, so it is the place for end-of-run work (logging results, uploading files).
    """

    RUN_FINISHED = "run_finished"
