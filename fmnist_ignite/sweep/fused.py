"""Fused trials: a sweep's trials that share a data pass are trained together, as one batched model.

K logistic models ``Linear(784, 10)`` are one ``(784, K*10)`` matrix product per batch (one per seed
when the seeds differ, each on its own batch order). Each trial's gradients are those of its own mean
cross-entropy, written out for all at once (:meth:`FusedWeights.forward_backward`); each trial keeps its own parameters,
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
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from typing import Any, cast

import torch
import torch.nn.functional as F
from ignite.engine import Events

from ..build import Validation
from ..data.loaders import TensorLoader
from ..engine import TrainStep, train_step_of
from ..evaluation import evaluation_results
from ..experiment import SAMPLES, Experiment
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
    """Whether a trial's step is a plain :class:`torch.optim.SGD` step that :meth:`FusedWeights.step` may take for it.

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


class FusedWeights:
    """The weights of a group's trials side by side in one tensor: one matrix product, one SGD step for all.

    ``(K*C, D)`` and ``(K*C,)`` leaves hold the ``K`` linear layers' weights and biases; while fused,
    each layer's own parameters are views of its rows (``param.data``), so every trial's model reads
    its current weights at every moment, and an optimizer's in-place step on them changes the
    fused tensors. :meth:`step` takes the :func:`plain_sgd` trials' steps in a few operations on the
    whole ``(K, C, D)`` block, with each trial's own ``lr``, ``weight_decay``, ``momentum`` and
    Nesterov flag read from its optimizer at every step (so schedules that set ``lr`` work) and the
    arithmetic of :class:`torch.optim.SGD`; any other trial's gradients are views of its rows and
    its own optimizer takes its step. :meth:`release` gives each layer its own tensors again and
    each momentum buffer to its optimizer's state, as its own steps would have left them.

    Args:
        steps: the trials' training steps (their optimizers and clipping).
        linears: the trials' linear layers, all of one shape, in the same order.
    """

    def __init__(self, steps: Sequence[TrainStep], linears: Sequence[torch.nn.Linear]) -> None:
        self.steps, self.linears = list(steps), list(linears)
        self.plain = [plain_sgd(step) for step in self.steps]
        self.groups = [step.optimizer.param_groups[0] for step in self.steps]
        with torch.no_grad():
            self.weight = torch.cat([linear.weight for linear in self.linears])
            self.bias = torch.cat([linear.bias for linear in self.linears])
            K, C = len(self.linears), self.linears[0].out_features
            self.shape = (K, C)
            self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None
            self.had_buffer = [False] * K
            if any(plain and group["momentum"] != 0 for plain, group in zip(self.plain, self.groups, strict=True)):
                buffers = torch.zeros_like(self.weight), torch.zeros_like(self.bias)
                for k, linear in enumerate(self.linears):  # those that took steps go on from their buffers
                    states = [self.steps[k].optimizer.state.get(p, {}) for p in (linear.weight, linear.bias)]
                    if self.plain[k] and all("momentum_buffer" in state for state in states):
                        self.had_buffer[k] = True
                        for buffer, state in zip(buffers, states, strict=True):
                            buffer[k * C : (k + 1) * C] = state["momentum_buffer"]
                self.buffers = buffers
            for k, linear in enumerate(self.linears):
                linear.weight.data = self.weight.detach()[k * C : (k + 1) * C]
                linear.bias.data = self.bias.detach()[k * C : (k + 1) * C]
        self.stepped = False

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every trial's logits for the flat images ``x``: ``(B, K, C)``."""
        return fused_logits(self.weight, self.bias, x, self.shape[0])

    @torch.no_grad()
    def forward_backward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each trial's mean cross-entropy on the flat images ``x`` and its count of correct predictions, ``(K,)``
        each; the gradients of those losses in ``weight.grad`` and ``bias.grad``.

        The gradients are written out rather than left to autograd (a third of a step's time here): for
        a linear model under cross-entropy, the gradient of the mean loss with respect to the logits is
        the softmax minus the one-hot labels, over the batch size; the weights' is that times the
        images, the biases' its sum over the batch (tested against autograd). The log-softmax is taken
        over the classes laid out ``(B, C, K)``, which runs many times faster than over a last
        dimension of ten.
        """
        K, C = self.shape
        B = len(labels)
        logits = self.logits(x)
        log_p = torch.log_softmax(logits.transpose(1, 2), 1)  # (B, C, K)
        index = labels.view(B, 1, 1).expand(B, 1, K)
        losses = log_p.gather(1, index).sum(0).view(K).div_(-B)
        correct = logits.argmax(2).eq_(labels[:, None]).sum(0)
        grad = log_p.exp_().scatter_add_(1, index, log_p.new_full((1, 1, 1), -1.0).expand(B, 1, K)).div_(B)
        grad = grad.transpose(1, 2).reshape(B, K * C)
        self.weight.grad = torch.mm(grad.t(), x)
        self.bias.grad = grad.sum(0)
        return losses, correct

    @torch.no_grad()
    def step(self) -> None:
        """Every trial's optimizer step on the gradients of the fused tensors (see the class's text)."""
        K, C = self.shape
        assert self.weight.grad is not None and self.bias.grad is not None
        grads = self.weight.grad, self.bias.grad
        if not all(self.plain):
            for k, step in enumerate(self.steps):
                if not self.plain[k]:
                    self.linears[k].weight.grad = grads[0][k * C : (k + 1) * C]
                    self.linears[k].bias.grad = grads[1][k * C : (k + 1) * C]
                    step.update()
        # The plain trials' settings; any other trial's rows get 0: no change (its own step is above).
        rows = [
            (group["lr"], group["weight_decay"], group["momentum"], float(group["nesterov"])) if plain else (0.0,) * 4
            for plain, group in zip(self.plain, self.groups, strict=True)
        ]
        decaying, accelerated = any(row[1] for row in rows), any(row[3] for row in rows)
        everywhere = all(row[3] for row in rows)
        settings = torch.tensor(rows, dtype=self.weight.dtype, device=self.weight.device).view(K, 4, 1, 1).unbind(1)
        lr, decay, momentum, nesterov = settings
        if self.buffers is None and any(row[2] for row in rows):  # a schedule gave a trial momentum this step
            self.buffers = torch.zeros_like(self.weight.detach()), torch.zeros_like(self.bias.detach())
        for param, grad, index in zip((self.weight, self.bias), grads, range(2), strict=True):
            shape = (K, C, -1)
            p, d = param.detach().view(shape), grad.view(shape)
            if decaying:  # grad + weight_decay * param
                d = torch.addcmul(d, p, decay)
            if self.buffers is not None:  # grad + buf * momentum (a first step: grad + 0), as SGD's
                buffer = self.buffers[index].view(shape)
                torch.addcmul(d, buffer, momentum, out=buffer)
                if accelerated:  # Nesterov: grad + momentum * buf
                    ahead = torch.addcmul(d, buffer, momentum)
                    d = ahead if everywhere else torch.where(nesterov > 0, ahead, buffer)
                else:
                    d = buffer
            p.addcmul_(d, lr, value=-1.0)
        self.stepped = True

    @torch.no_grad()
    def release(self) -> None:
        """Each layer its own tensors again (current values); each momentum buffer into its optimizer's state."""
        C = self.shape[1]
        for k, linear in enumerate(self.linears):
            linear.weight.data = linear.weight.data.clone()
            linear.bias.data = linear.bias.data.clone()
            buffered = self.plain[k] and self.groups[k]["momentum"] != 0 and (self.stepped or self.had_buffer[k])
            if self.buffers is not None and buffered:
                for param, buffer in zip((linear.weight, linear.bias), self.buffers, strict=True):
                    self.steps[k].optimizer.state[param]["momentum_buffer"] = buffer[k * C : (k + 1) * C].clone()


def fused_logits(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, trials: int) -> torch.Tensor:
    """The logits of ``trials`` linear models side by side (``(K*C, D)`` weights, ``(K*C,)`` biases) for the flat
    images ``x``: one matrix product, ``(B, K, C)``."""
    return torch.addmm(bias, x, weight.t()).view(len(x), trials, -1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each trial's cross-entropy on each image: ``(B, K)`` from logits ``(B, K, C)`` and labels ``(B,)``."""
    return F.cross_entropy(logits.transpose(1, 2), labels[:, None].expand(-1, logits.shape[1]), reduction="none")


def _call_handlers(handlers: list[Any]) -> None:
    for func, args, kwargs in handlers:
        if args and isinstance(args[0], weakref.ref):
            func(args[0](), *args[1:], **kwargs)
        else:
            func(*args, **kwargs)


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
        return self._guarded(k, self.experiments[k].trainer.fire_event, event)

    def _call(self, k: int, trainer: Any, event: Any, handlers: list[Any]) -> bool:
        """Call ``handlers``, trial ``k``'s ``trainer``'s list for ``event``, as :meth:`_fire` would: an error ends
        that trial alone; whether none came.

        They are called as :meth:`ignite.engine.Engine.fire_event` calls them (the engine given to those
        that take it), without its per-call debug message: for the iteration events, called ``K`` times a step.
        """
        trainer.last_event_name = event
        return self._guarded(k, _call_handlers, handlers)

    def _guarded(self, k: int, call: Callable[..., Any], *args: Any) -> bool:
        """``call(*args)`` for trial ``k``: an error ends that trial alone (a signal's :class:`Interrupted` stops
        the group); whether none came."""
        try:
            call(*args)
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
        """The members' weights side by side: ``(K*C, D)`` and ``(K*C,)``."""
        linears = [self._linear(k) for k in members]
        return torch.cat([linear.weight for linear in linears]), torch.cat([linear.bias for linear in linears])

    def _linear(self, k: int) -> torch.nn.Linear:
        return cast(LogisticRegression, self.experiments[k].model).linear

    def _fuse(self, members: list[int]) -> FusedWeights:
        return FusedWeights([self.steps[k] for k in members], [self._linear(k) for k in members])

    def _epoch(self, members: list[int]) -> list[int]:
        """One epoch of training of ``members`` (their ``EPOCH_STARTED`` fired); those still in the group.

        Per seed, one batch, one :class:`FusedWeights` product and step for its trials; each trial's
        iteration handlers are called as its trainer would call them; the losses and correct counts
        are kept per step for the whole group and given to each trial's :class:`EpochLoss` at the end.
        """
        if not members:
            return members
        seeds = self._by_seed(members, "train")
        seed_of = {k: seed for seed, ks in seeds.items() for k in ks}
        loaders = {seed: self.experiments[ks[0]].loaders["train"] for seed, ks in seeds.items()}
        iterators = {seed: iter(loader) for seed, loader in loaders.items()}
        prepare = self.steps[members[0]].prepare_batch
        started, completed = Events.ITERATION_STARTED, Events.ITERATION_COMPLETED
        trainers = {k: self.experiments[k].trainer for k in members}
        states = {k: trainer.state for k, trainer in trainers.items()}
        handlers = {k: trainer._event_handlers for k, trainer in trainers.items()}  # each read live, once an event
        fused: dict[int, tuple[list[int], FusedWeights, list[tuple[torch.Tensor, torch.Tensor, int]]]] = {}

        def flush(seed: int) -> None:  # the steps taken so far to each trial's epoch totals; its own tensors again
            ks, weights, steps = fused.pop(seed)
            weights.release()
            if steps:
                losses, correct = torch.stack([s[0] for s in steps]), torch.stack([s[1] for s in steps])
                samples = sum(s[2] for s in steps)
                for i, k in enumerate(ks):
                    self.steps[k].stats.record_steps(losses[:, i], correct[:, i], samples)

        def leave(lost: list[int]) -> None:  # trials that failed: their seeds' trials fused again without them
            nonlocal members
            members = [k for k in members if k not in lost]
            for seed in {seed_of[k] for k in lost}:
                flush(seed)
                ks = [k for k in seeds[seed] if k in members]
                seeds[seed] = ks
                if ks:
                    fused[seed] = (ks, self._fuse(ks), [])

        outputs: dict[int, torch.Tensor] = {}
        try:
            for seed, ks in seeds.items():
                fused[seed] = (ks, self._fuse(ks), [])
            for _ in range(len(next(iter(loaders.values())))):
                batches = {seed: next(iterator) for seed, iterator in iterators.items()}
                lost = []
                for k in members:
                    state = states[k]
                    state.iteration += 1
                    table = handlers[k]
                    on_start = table[started]
                    if on_start or table[completed]:  # they may read the batch
                        state.batch = batches[seed_of[k]]  # type: ignore[assignment]
                        if on_start and not self._call(k, trainers[k], started, on_start):
                            lost.append(k)
                if lost:
                    leave(lost)
                    lost = []
                if not members:
                    return members
                for seed, (ks, weights, steps) in fused.items():
                    x, y = prepare(batches[seed], self.device, True)
                    losses, correct = weights.forward_backward(x.flatten(1), y)
                    weights.step()
                    steps.append((losses, correct, len(y)))
                    outputs.update(zip(ks, losses.unbind(), strict=True))
                for k in members:
                    on_end = handlers[k][completed]
                    if on_end:
                        states[k].output = outputs[k]  # type: ignore[assignment]
                        if not self._call(k, trainers[k], completed, on_end):
                            lost.append(k)
                if lost:
                    leave(lost)
            for k in members:  # the last step's loss, as a trainer leaves it
                self.experiments[k].trainer.state.output = outputs[k]  # type: ignore[assignment]
        finally:
            for seed in list(fused):
                flush(seed)
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
            logits = fused_logits(weight, bias, x.flatten(1), K)
            loss += cross_entropy(logits, y).sum(0).double()
            predicted = logits.argmax(2)
            correct += predicted.eq(y[:, None]).sum(0)
            if confusion is not None:
                index = offsets[None, :] + y[:, None] * classes + predicted
                confusion += torch.bincount(index.flatten(), minlength=len(confusion))
            count += len(y)
        return loss, correct, None if confusion is None else confusion.view(K, classes, classes), count

    @torch.no_grad()
    def _predicted(self, members: list[int], images: torch.Tensor, labels: torch.Tensor) -> dict[int, list[int]]:
        """The class each member's weights give each of ``images``, in one product for all."""
        x, _ = self.steps[members[0]].prepare_batch((images, labels), self.device, False)
        weight, bias = self._weights(members)
        classes = fused_logits(weight, bias, x.flatten(1), len(members)).argmax(2)
        return {k: classes[:, i].tolist() for i, k in enumerate(members)}

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
            predicted = self._predicted(members, first.data.test_images[:SAMPLES], first.data.test_labels[:SAMPLES])
        # Every trial's end started (model.pt, report.json; its pictures queued), then each completed in turn: the
        # pictures of the ones after are drawn and written by the pool while the ones before complete.
        with ThreadPoolExecutor(2, thread_name_prefix="fmnist-ignite-figures") as pool:
            completions: dict[int, Callable[[], dict[str, Any]]] = {}
            for k in members:
                try:
                    completions[k] = self.experiments[k].finishing(tests[k], pool, predicted[k])
                except Exception as err:
                    self._ended_with(k, err, done)
            for k, complete in completions.items():
                try:
                    metrics = complete()
                except Exception as err:
                    self._ended_with(k, err, done)
                    continue
                self.sessions.pop(k).close()
                done(k, metrics, None)

    def _ended_with(
        self, k: int, err: Exception, done: Callable[[int, dict[str, Any] | None, BaseException | None], None]
    ) -> None:
        stack = self.sessions.pop(k)
        stack.__exit__(type(err), err, err.__traceback__)
        done(k, None, err)
