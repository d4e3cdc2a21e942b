"""Fused trials: a sweep's trials that share a data pass are trained together, as one batched model.

K logistic models ``Linear(784, 10)`` are one ``(784, K*10)`` matrix product per batch (one per seed
when the seeds differ, each on its own batch order). The loss is the sum of each trial's own mean
cross-entropy, so each trial's gradients are exactly its own; each trial keeps its own parameters,
optimizer, schedule, history, monitor, early stopping, checkpoints and run directory. Each trial's
Ignite trainer is driven here event by event (``STARTED``, ``EPOCH_STARTED``, ``ITERATION_STARTED``,
``ITERATION_COMPLETED``, ``EPOCH_COMPLETED``, ``TERMINATE``, ``COMPLETED``; not ``GET_BATCH_*``, which
no fusion-aware handler uses) as ``Engine.run`` would, so every handler of a standalone run does the
same here; a trial that early stopping or pruning ends is frozen (it leaves the group: its weights
no longer change). Validation and the test are one pass for the whole group; the run's files are
written by the same code as a standalone run's.

What cannot be trained this way (:func:`unfusable` says why) is trained as a standalone run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from typing import Any, cast

import torch
import torch.nn.functional as F
from ignite.engine import Events

from ..build import Validation
from ..data.loaders import TensorLoader
from ..engine import TrainStep, train_step_of
from ..evaluation import evaluation_results
from ..experiment import Experiment
from ..history import attached_metrics
from ..interrupt import Interrupted, StopRequest, stop_on_signals
from ..models import LogisticRegression

logger = logging.getLogger(__name__)


def unfusable(experiment: Experiment) -> str | None:
    """Why ``experiment`` cannot train in a fused group; ``None`` if it can.

    It can when its model is the built-in ``logistic``, its trainer and validation are those
    :func:`~fmnist_ignite.build.build_experiment` makes (one process, no ``trainer.compile``, no
    ``fast_dev_run``), its evaluator computes only the loss and accuracy, and each of its handlers is
    fusion-aware (a class attribute ``fusion_aware = True``: the built-in ones are).
    """
    config = experiment.config
    if config.trainer.fast_dev_run:
        return "trainer.fast_dev_run is set"
    if config.trainer.compile:
        return "trainer.compile is set"
    if config.distributed.backend is not None:
        return "it is data-parallel (distributed.backend)"
    if type(experiment.model) is not LogisticRegression:
        return f"its model ({config.model.name}) is not the built-in logistic one"
    step = train_step_of(experiment.trainer)
    if step is None or step.batch_share is not None:
        return "its trainer is not the built-in one"
    loaders = [experiment.loaders[split] for split in ("train", "val", "test")]
    if not all(type(loader) is TensorLoader and loader.limit is None for loader in loaders):
        return "its data loaders are not the built-in ones"
    if not isinstance(experiment.validation, Validation) or attached_metrics(experiment.evaluator) != [
        "loss",
        "accuracy",
    ]:
        return "its validation computes more than loss and accuracy"
    for name, handler in experiment.handlers.items():
        if not getattr(handler, "fusion_aware", False):
            kind = getattr(handler, "__qualname__", type(handler).__qualname__)
            return f"its handler {name} ({kind}) is not fusion-aware"
    return None


def group_key(experiment: Experiment) -> tuple[Any, ...]:
    """Experiments with equal keys can share a data pass: the same data set, batches, model and device."""
    config = experiment.config
    return (repr(config.data.model_dump()), repr(config.model.model_dump()), config.device)


def plain_sgd(step: TrainStep) -> bool:
    """Whether trial's step is a plain :class:`torch.optim.SGD` step that :func:`sgd_together` may take for it.

    Plain: one parameter group, no dampening, ``maximize``, ``differentiable`` or ``fused``, a float
    learning rate, no gradient clipping, no step hooks, and no torch ``LRScheduler`` counting its steps
    (Ignite's schedulers set ``lr`` in the group and do not).
    """
    optimizer = step.optimizer
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1 or step.grad_clip_norm is not None:
        return False
    group = optimizer.param_groups[0]
    return (
        group["dampening"] == 0
        and not group["maximize"]
        and not group.get("differentiable")
        and not group.get("fused")
        and isinstance(group["lr"], float)
        and not optimizer._optimizer_step_pre_hooks
        and not optimizer._optimizer_step_post_hooks
        and not getattr(optimizer.step, "_wrapped_by_lr_sched", False)
    )


def sgd_together(steps: Sequence[TrainStep]) -> None:
    """The SGD step of every trial in ``steps`` (each :func:`plain_sgd`), in a few ``torch._foreach_*`` calls.

    The arithmetic is :class:`torch.optim.SGD`'s (``grad + weight_decay * param``; the momentum buffer
    ``buf * momentum + grad``, kept in each optimizer's state as its own step keeps it; with Nesterov
    ``grad + momentum * buf``; ``param - lr * grad``), with each trial's own ``lr``, ``weight_decay``
    and ``momentum``: one call per operation for all trials instead of one optimizer step per trial,
    the per-step cost that dominates a fused group of small models.
    """
    kinds: dict[tuple[bool, bool, bool], list[tuple[torch.Tensor, torch.Tensor, dict[str, Any], Any]]] = {}
    for step in steps:
        optimizer = step.optimizer
        group = optimizer.param_groups[0]
        kind = (group["weight_decay"] != 0, group["momentum"] != 0, bool(group["nesterov"]))
        for param in group["params"]:
            if param.grad is not None:
                kinds.setdefault(kind, []).append((param, param.grad, group, optimizer.state[param]))
    with torch.no_grad():
        for (decay, momentum, nesterov), items in kinds.items():
            params = [item[0] for item in items]
            grads: list[torch.Tensor] | tuple[torch.Tensor, ...] = [item[1] for item in items]
            groups = [item[2] for item in items]
            if decay:
                grads = torch._foreach_add(grads, torch._foreach_mul(params, [g["weight_decay"] for g in groups]))
            if momentum:
                momenta = [g["momentum"] for g in groups]
                states = [item[3] for item in items]
                if all("momentum_buffer" in state for state in states):
                    buffers = [state["momentum_buffer"] for state in states]
                    torch._foreach_mul_(buffers, momenta)
                    torch._foreach_add_(buffers, grads)
                else:  # the first step: each buffer starts as the gradient
                    buffers = [torch.clone(grad).detach() for grad in grads]
                    for state, buffer in zip(states, buffers, strict=True):
                        state["momentum_buffer"] = buffer
                grads = torch._foreach_add(grads, torch._foreach_mul(buffers, momenta)) if nesterov else buffers
            torch._foreach_add_(params, torch._foreach_mul(grads, [-g["lr"] for g in groups]))


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each trial's cross-entropy on each image: ``(B, K)`` from logits ``(B, K, C)`` and labels ``(B,)``."""
    return F.cross_entropy(logits.transpose(1, 2), labels[:, None].expand(-1, logits.shape[1]), reduction="none")


class FusedGroup:
    """Trains fusable experiments (see :func:`unfusable`, equal :func:`group_key`) together and finishes each.

    Args:
        experiments: built and not yet run (new runs, or resumed ones).
    """

    def __init__(self, experiments: Sequence[Experiment]) -> None:
        self.experiments = list(experiments)
        self.steps: list[TrainStep] = []
        for experiment in self.experiments:
            step = train_step_of(experiment.trainer)
            assert step is not None
            self.steps.append(step)
        self.device = self.experiments[0].context.device
        self.stop_request = StopRequest()
        self.sessions: dict[int, ExitStack] = {}
        self.failed: dict[int, BaseException] = {}

    def run(self, done: Callable[[int, dict[str, Any] | None, BaseException | None], None]) -> None:
        """Train every experiment, then test and finish each; ``done(k, metrics, error)`` is called for each.

        A trial that fails (a NaN loss, a handler's error) ends alone, its run stopped as a standalone
        one would stop; the others go on.

        Raises:
            Interrupted: SIGINT or SIGTERM stopped the group (each trial's last epoch is saved).
        """
        for experiment in self.experiments:  # one request: a signal stops every trial after its epoch is saved
            experiment.stop_request = self.stop_request
        self.sessions = sessions = {}
        self.failed = {}
        with stop_on_signals(self.experiments[0].trainer, self.stop_request):
            try:
                for k, experiment in enumerate(self.experiments):
                    stack = ExitStack()
                    try:
                        stack.enter_context(experiment.session(signals=False))
                    except Exception as err:
                        done(k, None, err)
                        continue
                    sessions[k] = stack
                self._train([k for k in sessions if not self.experiments[k].training_done()])
                for k in list(sessions):
                    self.experiments[k].check_stop()
                self._finish(done)
            except BaseException as err:
                for k in reversed(list(sessions)):
                    sessions.pop(k).__exit__(type(err), err, err.__traceback__)
                raise

    def _fail(self, k: int, err: BaseException) -> None:
        stack = self.sessions.pop(k)
        with suppress(Exception):  # the session re-raises the error it ended with
            stack.__exit__(type(err), err, err.__traceback__)
        self.failed[k] = err

    def _fire(self, k: int, event: Any) -> bool:
        """Fire ``event`` on trial ``k``'s trainer; an error ends that trial alone; whether none came."""
        try:
            self.experiments[k].trainer.fire_event(event)
        except Interrupted:
            raise
        except Exception as err:
            self._fail(k, err)
            return False
        return True

    def _train(self, active: list[int]) -> None:
        for k in list(active):
            trainer, experiment = self.experiments[k].trainer, self.experiments[k]
            loader = experiment.loaders["train"]
            state = trainer.state
            state.dataloader = loader
            state.max_epochs = experiment.config.trainer.max_epochs
            state.epoch_length = len(loader)
            trainer.should_terminate = trainer.should_terminate_single_epoch = trainer.should_interrupt = False
            state.times = {Events.EPOCH_COMPLETED.name: None, Events.COMPLETED.name: None}
            if not self._fire(k, Events.STARTED) or self._ended(k):
                active.remove(k)
        while active:
            epoch = min(self.experiments[k].trainer.state.epoch for k in active) + 1
            members = [k for k in active if self.experiments[k].trainer.state.epoch == epoch - 1]
            started = time.perf_counter()
            for k in list(members):
                trainer = self.experiments[k].trainer
                trainer.state.epoch += 1
                if not self._fire(k, Events.EPOCH_STARTED) or self._ended(k):
                    members.remove(k)
                    active.remove(k)
            members = self._epoch(members)
            active = [k for k in active if k in self.sessions]
            self._validate(members)
            taken = time.perf_counter() - started
            for k in members:
                trainer = self.experiments[k].trainer
                trainer.state.times[Events.EPOCH_COMPLETED.name] = taken
                if not self._fire(k, Events.EPOCH_COMPLETED) or self._ended(k, True):
                    active.remove(k)

    def _ended(self, k: int, epoch_end: bool = False) -> bool:
        """After an event: whether trial ``k``'s training is over (terminated, or at an epoch's end
        ``max_epochs``); if so, fire what ``Engine.run`` fires at its end (``TERMINATE`` when terminated,
        then ``COMPLETED``)."""
        trainer = self.experiments[k].trainer
        terminated = trainer.should_terminate
        if not terminated and not (epoch_end and trainer.state.epoch >= (trainer.state.max_epochs or 0)):
            return False
        if terminated:
            self._fire(k, Events.TERMINATE)
        if k in self.sessions:
            trainer.state.times[Events.COMPLETED.name] = 0.0
            self._fire(k, Events.COMPLETED)
        return True

    def _by_seed(self, members: list[int], split: str) -> dict[int, list[int]]:
        """The members by seed: those of one seed share the split and the order of its batches."""
        groups: dict[int, list[int]] = {}
        for k in members:
            groups.setdefault(self.experiments[k].loaders[split].seed, []).append(k)
        return groups

    def _weights(self, members: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' weights side by side: ``(K*C, D)`` and ``(K*C,)``, in the autograd graph."""
        linears = [cast(LogisticRegression, self.experiments[k].model).linear for k in members]
        weight = torch.cat([linear.weight for linear in linears])
        bias = torch.cat([linear.bias for linear in linears])
        return weight, bias

    def _epoch(self, members: list[int]) -> list[int]:
        """One epoch of training of ``members`` (their ``EPOCH_STARTED`` fired); those still in the group."""
        if not members:
            return members
        groups = self._by_seed(members, "train")
        first = {seed: self.experiments[ks[0]] for seed, ks in groups.items()}
        iterators = {seed: iter(e.loaders["train"]) for seed, e in first.items()}
        prepare = self.steps[members[0]].prepare_batch
        # Which trainers have handlers per iteration (a schedule, the TensorBoard's batch loss): only those fire.
        fires = {
            k: (
                bool(self.experiments[k].trainer._event_handlers[Events.ITERATION_STARTED]),
                bool(self.experiments[k].trainer._event_handlers[Events.ITERATION_COMPLETED]),
            )
            for k in members
        }
        plain = {k: plain_sgd(self.steps[k]) for k in members}  # their steps are taken together
        for _ in range(len(first[next(iter(first))].loaders["train"])):
            batches = {seed: next(iterator) for seed, iterator in iterators.items()}
            for k in members:
                state = self.experiments[k].trainer.state
                state.iteration += 1
                if fires[k][0] or fires[k][1]:  # the handlers may read the batch
                    state.batch = batches[self.experiments[k].loaders["train"].seed]  # type: ignore[assignment]
                if fires[k][0] and not self._fire(k, Events.ITERATION_STARTED):
                    members = [m for m in members if m != k]
                    groups = self._by_seed(members, "train")
            if not members:
                return members
            total = None
            results: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
            for seed, ks in groups.items():
                x, y = prepare(batches[seed], self.device, True)
                weight, bias = self._weights(ks)
                logits = torch.addmm(bias, x.flatten(1), weight.t()).view(len(y), len(ks), -1)
                losses = cross_entropy(logits, y).mean(0)  # each trial's own mean: its gradients are its own
                total = losses.sum() if total is None else total + losses.sum()
                correct = logits.detach().argmax(2).eq_(y[:, None]).sum(0)
                detached = losses.detach()
                for i, k in enumerate(ks):
                    results[k] = (detached[i], correct[i], len(y))
            for k in members:
                if plain[k]:  # zero_grad()'s set_to_none, without its per-call cost
                    for param in self.steps[k].parameters:
                        param.grad = None
                else:
                    self.steps[k].optimizer.zero_grad()
            assert total is not None
            total.backward()
            together = [k for k in members if plain[k]]
            sgd_together([self.steps[k] for k in together])
            for k in list(members):
                step, trainer = self.steps[k], self.experiments[k].trainer
                if not plain[k]:
                    step.update()
                loss, correct_k, n = results[k]
                step.stats.record(loss, correct_k, n)
                trainer.state.output = loss  # type: ignore[assignment]
                if fires[k][1] and not self._fire(k, Events.ITERATION_COMPLETED):
                    members.remove(k)
                    groups = self._by_seed(members, "train")
        return members

    @torch.no_grad()
    def _validate(self, members: list[int]) -> None:
        """Validate ``members`` in one pass per seed; each trial's validation step gets its own metrics."""
        for ks in self._by_seed(members, "val").values():
            loader = self.experiments[ks[0]].loaders["val"]
            loss, correct, _, count = self._evaluate(ks, loader)
            for i, k in enumerate(ks):
                self.experiments[k].model.eval()
                metrics = {"loss": float(loss[i]) / count, "accuracy": float(correct[i]) / count}
                self.experiments[k].validation.provide(metrics)

    @torch.no_grad()
    def _evaluate(
        self, members: list[int], loader: TensorLoader, classes: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """Summed loss, correct count (with ``classes``, confusion matrices ``(K, C, C)``), images: of ``members``."""
        prepare = self.steps[members[0]].prepare_batch
        weight, bias = self._weights(members)
        K = len(members)
        loss = torch.zeros(K, dtype=torch.float64, device=self.device)
        correct = torch.zeros(K, dtype=torch.long, device=self.device)
        confusion = torch.zeros(K * classes * classes, dtype=torch.long, device=self.device) if classes else None
        offsets = torch.arange(K, device=self.device) * classes * classes
        count = 0
        for batch in loader:
            x, y = prepare(batch, self.device, True)
            logits = torch.addmm(bias, x.flatten(1), weight.t()).view(len(y), K, -1)
            loss += cross_entropy(logits, y).sum(0).double()
            predicted = logits.argmax(2)
            correct += predicted.eq(y[:, None]).sum(0)
            if confusion is not None:
                index = offsets[None, :] + y[:, None] * classes + predicted
                confusion += torch.bincount(index.flatten(), minlength=len(confusion))
            count += len(y)
        return loss, correct, None if confusion is None else confusion.view(K, classes, classes), count

    def _finish(self, done: Callable[[int, dict[str, Any] | None, BaseException | None], None]) -> None:
        """Test every trial still in the group in one pass (its final weights), then finish each run."""
        for k, err in self.failed.items():
            done(k, None, err)
        members = list(self.sessions)
        tests: dict[int, dict[str, Any]] = {}
        if members:
            for k in members:
                self.experiments[k].final_weights()
            first = self.experiments[members[0]]
            classes = first.data.classes
            loss, correct, confusion, count = self._evaluate(members, first.loaders["test"], len(classes))
            assert confusion is not None
            for i, k in enumerate(members):
                tests[k] = evaluation_results(float(correct[i]) / count, float(loss[i]) / count, confusion[i], classes)
        for k in members:
            stack = self.sessions.pop(k)
            try:
                metrics = self.experiments[k].finish(tests[k])
            except Exception as err:
                stack.__exit__(type(err), err, err.__traceback__)
                done(k, None, err)
                continue
            stack.close()
            done(k, metrics, None)
