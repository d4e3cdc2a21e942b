"""Events of a run beyond Ignite's own, fired on the trainer."""

from __future__ import annotations

from ignite.engine import EventEnum


class RunEvents(EventEnum):
    """Moments of a run that Ignite's engine does not know about.

    ``RUN_STARTED`` fires on the trainer each time :meth:`~fmnist_ignite.Experiment.run` starts,
    before a new run's directory is created (or a resumed run's is locked): the place to reach an
    outside service, such as a tracking server, so that if it cannot be reached the run stops
    before anything is written.

    ``RUN_FINISHED`` fires on the trainer once, after the test evaluation, when ``model.pt``,
    ``report.json`` and the pictures are written and just before ``metrics.json`` marks the run as
    finished. ``trainer.state.results`` then holds ``metrics`` (what ``metrics.json`` will hold),
    ``report`` (``report.json``) and ``figures`` (name -> path of each picture). A handler that
    fails here leaves the run unfinished and resumable. It fires also when a resumed run only had
    its end left to do, so it is the place for end-of-run work (logging results, uploading files).

    ``RUN_STOPPED`` fires on the trainer when a started run stops without finishing: a stop signal,
    or an error in training or in the end's work; ``trainer.state.stop_error`` holds the exception,
    which propagates afterwards. A handler here should not raise. A process killed outright
    (``SIGKILL``, power loss) fires nothing.
    """

    RUN_STARTED = "run_started"
    RUN_FINISHED = "run_finished"
    RUN_STOPPED = "run_stopped"
