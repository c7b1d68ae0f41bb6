"""Ensembles and soups of finished runs (recipe step 6: "ensembles are a pretty much guaranteed
way to gain 2% on any task").

An ensemble averages the members' predictions through task.average (for classification: the
mean of the softmax probabilities). Greedy selection (Caruana et al. 2004, the selection behind
"model soups") adds, with replacement, the member that most lowers the val loss of the average,
and stops when none does: a weighted ensemble chosen on val, scored once on test. A soup
averages the members' weights instead (Wortsman et al. 2022): one model's cost at test time,
but it works only for members fine-tuned from one initialisation (model.init_from).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from nnrecipe.errors import UserError
from nnrecipe.squeeze import runs, scoring

log = logging.getLogger("nnrecipe")


@dataclass
class Member:
    run: runs.Run
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # split -> outputs
    scores: dict[str, dict] = field(default_factory=dict)


@dataclass
class Pool:
    """Members scored on the same samples, plus what they share."""

    members: list[Member]
    targets: dict[str, torch.Tensor]
    task: object
    data: object   # the first member's DataBundle (all members' splits hold the same samples)
    device: torch.device


def load_pool(paths, device: torch.device, splits=("val", "test")) -> Pool:
    """Every run's outputs on `splits`; refuses runs whose splits hold other samples."""
    files = runs.find_runs(paths)
    if not files:
        raise UserError("no runs given: pass run folders, a sweep folder or .pt files")
    members, bundles, reference, targets = [], {}, None, {}
    for path in files:
        run = runs.load_run(path)
        key = repr(runs.data_identity(run.config))
        if key not in bundles:
            data = runs.build_data_of(run.config, device)
            bundles[key] = (data, runs.task_of(run.config, data))
        data, task = bundles[key]
        prints = {s: runs.split_fingerprint(data.splits[s]) for s in splits}
        if reference is None:
            reference = (run, prints, data)
        elif type(task) is not type(bundles[repr(runs.data_identity(reference[0].config))][1]):
            raise UserError(f"members {reference[0].name} and {run.name} learn different tasks "
                            f"(task._target_): their outputs cannot be averaged")
        elif prints != reference[1]:
            raise UserError(_split_mismatch(reference[0], run, prints, reference[1]))
        model = runs.build_model_of(run, data, device, task)
        trainer = run.config.get("trainer", {})
        member = Member(run)
        for s in splits:
            member.outputs[s], targets[s] = runs.predict(model, data.splits[s],
                                                trainer.get("eval_batch_size", 512),
                                                trainer.get("precision", "fp32"),
                                                data.num_workers)
        members.append(member)
        del model
    data = reference[2]
    task = bundles[repr(runs.data_identity(reference[0].config))][1]
    for m in members:
        m.scores = {s: scoring.score(task, m.outputs[s], targets[s]) for s in splits}
    return Pool(members, targets, task, data, device)


def _split_mismatch(a: runs.Run, b: runs.Run, prints_b: dict, prints_a: dict) -> str:
    from nnrecipe.checkpoint import config_changes

    differ = [s for s in prints_a if prints_a[s] != prints_b[s]]
    keys = config_changes(runs.data_identity(a.config), runs.data_identity(b.config))
    why = f" (their configs differ in {', '.join(keys)})" if keys else ""
    return (f"members {a.name} and {b.name} were scored on different {'/'.join(differ)} "
            f"samples{why}: an ensemble needs members trained on the same data and splits. "
            f"Ensemble runs that differ only in what does not move the split (seed with a fixed "
            f"data.split_seed, model, optimizer, ...)")


def combined(pool: Pool, indices: list[int], split: str) -> torch.Tensor:
    return pool.task.average([pool.members[i].outputs[split] for i in indices])


def score_of(pool: Pool, indices: list[int], split: str) -> dict:
    return scoring.score(pool.task, combined(pool, indices, split), pool.targets[split])


def greedy_selection(pool: Pool, max_size: int | None = None) -> list[int]:
    """Member indices (with repeats: a weighted average) chosen on val loss: start from the best
    member, add whichever lowers the val loss of the average most, stop when none does."""
    def val_loss(idx):
        return scoring.metrics(pool.task, combined(pool, idx, "val"),
                               pool.targets["val"])["loss"]

    order = sorted(range(len(pool.members)), key=lambda i: pool.members[i].scores["val"]["loss"])
    chosen, best = [order[0]], val_loss([order[0]])
    while max_size is None or len(chosen) < max_size:
        trials = [(val_loss(chosen + [i]), i) for i in order]
        loss, i = min(trials)
        if loss >= best:
            break
        chosen, best = chosen + [i], loss
    return chosen


def top_members(pool: Pool, k: int) -> Pool:
    """The k members with the lowest val loss."""
    if k < 1:
        raise UserError(f"--top {k}: keep at least one member")
    keep = sorted(pool.members, key=lambda m: m.scores["val"]["loss"])[:k]
    return Pool(keep, pool.targets, pool.task, pool.data, pool.device)


# --- soups: averages of weights -------------------------------------------------------------


def average_weights(states: list[dict]) -> dict:
    """The mean of state_dicts (integer buffers such as BatchNorm's counters: the first's)."""
    keys = states[0].keys()
    if any(s.keys() != keys or any(s[k].shape != states[0][k].shape for k in keys)
           for s in states[1:]):
        raise UserError("soup members must have the same architecture (the same model config): "
                        "their weights do not line up")
    return {k: (torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
                if states[0][k].is_floating_point() else states[0][k].clone())
            for k in keys}


def soup_outputs(pool: Pool, indices: list[int], splits=("val", "test")) -> dict:
    """Outputs on `splits` of the model whose weights average those of members `indices`."""
    first = pool.members[indices[0]].run
    weights = average_weights([pool.members[i].run.weights for i in indices])
    soup_run = runs.Run(name="soup", file=first.file, config=first.config, weights=weights)
    model = runs.build_model_of(soup_run, pool.data, pool.device, pool.task)
    trainer = first.config.get("trainer", {})
    return {s: runs.predict(model, pool.data.splits[s], trainer.get("eval_batch_size", 512),
                            trainer.get("precision", "fp32"), pool.data.num_workers)[0]
            for s in splits}


def greedy_soup(pool: Pool) -> tuple[list[int], dict]:
    """Wortsman et al.'s greedy soup: members by val loss, each kept in the average only when
    it does not raise the soup's val loss. Returns (indices, outputs per split)."""
    order = sorted(range(len(pool.members)), key=lambda i: pool.members[i].scores["val"]["loss"])
    chosen, outputs = [order[0]], {s: pool.members[order[0]].outputs[s] for s in pool.targets}
    best = scoring.metrics(pool.task, outputs["val"], pool.targets["val"])["loss"]
    for i in order[1:]:
        trial = soup_outputs(pool, chosen + [i], tuple(pool.targets))
        loss = scoring.metrics(pool.task, trial["val"], pool.targets["val"])["loss"]
        if loss <= best:
            chosen, outputs, best = chosen + [i], trial, loss
    return chosen, outputs


def shared_init(pool: Pool) -> bool:
    """True when every member started from the same weights (one model.init_from)."""
    starts = {str((m.run.config.get("model") or {}).get("init_from")) for m in pool.members}
    return len(starts) == 1 and "None" not in starts
