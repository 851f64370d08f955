"""The training recipe as data: phases, each a start step and the attention of the non-dense layers.

The paper's recipe is two phases (Lighthouse, then dense recovery); a branch comparison adds a dense warm-up
before them (dense 0-200, Lighthouse 200-625, dense 625-1000). ``stage.switch_step N`` is the shorthand for
[the model's own backend from 0, ``stage2_backend`` from N]. The phase a step belongs to follows from the step
alone, so resuming a checkpoint under another schedule (the recovery config, a branch) is just that schedule
from the resumed step on.

The LR clock: normally the LR schedule (LitLM) is read at the global step. A phase with ``rescale_lr`` fits the
rest of the schedule, from where it stands at the phase's start, into the steps left until the run ends
(``trainer.max_steps``): the LR is continuous at the branch point and still anneals to its floor at the last step.
That is the equal-time arm of a comparison: it branches off a shared run and stops earlier than the full-length
arm, fully annealed, instead of being cut mid-schedule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lighthouse.model.config import ATTENTION_BACKENDS


@dataclass(frozen=True)
class Phase:
    """One phase of training: from global step ``start`` on, every non-dense layer runs ``attention``."""

    start: int
    """First global step of the phase (the first phase starts at 0)."""
    attention: str
    """Attention backend of the non-dense layers: sdpa (dense), lighthouse (Triton, CUDA) or lighthouse_naive."""
    rescale_lr: bool = False
    """Fit the rest of the LR schedule into this phase's remaining steps (see the module docstring)."""

    @property
    def sparse(self) -> bool:
        return self.attention != "sdpa"


def check_phases(phases: list[Phase], field: str = "stage.schedule") -> None:
    """Raise ValueError naming the field: the first phase starts at 0, starts never decrease, backends exist."""
    if not phases:
        raise ValueError(f"{field} is empty: give at least one phase, e.g. [{{start: 0, attention: sdpa}}]")
    for i, phase in enumerate(phases):
        if not isinstance(phase.start, int) or isinstance(phase.start, bool) or phase.start < 0:
            raise ValueError(f"{field}[{i}].start={phase.start!r} must be an integer >= 0")
        if phase.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"{field}[{i}].attention={phase.attention!r} is not one of {ATTENTION_BACKENDS}")
        if i and phase.start < phases[i - 1].start:
            raise ValueError(
                f"{field}[{i}].start={phase.start} comes before {field}[{i - 1}].start={phases[i - 1].start}: "
                "phases are listed in the order they run"
            )
    if phases[0].start != 0:
        raise ValueError(f"{field}[0].start={phases[0].start} must be 0 (the first phase starts the run)")


def resolve_phases(
    schedule: list[Phase] | None, switch_step: int | None, model_backend: str, stage2_backend: str
) -> list[Phase]:
    """The phases of a run: ``schedule`` as given, or the switch_step shorthand, or the model's backend alone."""
    if schedule is not None:
        if switch_step is not None:
            raise ValueError(
                f"stage.switch_step={switch_step} and stage.schedule are both set: the schedule names every phase "
                "(switch_step N is the shorthand for [the model's attention from 0, stage2_backend from N])"
            )
        phases = list(schedule)
    elif switch_step is None:
        phases = [Phase(0, model_backend)]
    else:
        phases = [Phase(0, model_backend), Phase(switch_step, stage2_backend)]
    check_phases(phases)
    return phases


def phase_index(phases: list[Phase], step: int) -> int:
    """The phase that global step ``step`` trains in: the last one started at or before it (a phase whose
    successor starts at the same step never runs)."""
    return max(i for i, phase in enumerate(phases) if phase.start <= step)


def lr_clock(phases: list[Phase], step: float, schedule_steps: int, end_step: int) -> float:
    """The position in the LR schedule (of length ``schedule_steps``) at global step ``step`` of a run that ends
    at ``end_step``: the step itself, except after a ``rescale_lr`` phase start, where the rest of the schedule
    is mapped linearly onto the steps left. Phases after it keep its clock."""
    position = float(step)
    offset, rate, origin = 0.0, 1.0, 0  # position = offset + (step - origin) * rate, piece by piece
    for phase in phases:
        if phase.start > step:
            break
        if phase.rescale_lr and end_step > phase.start:
            here = offset + (phase.start - origin) * rate  # where the clock stands at the phase start
            offset, origin = here, phase.start
            rate = max(0.0, schedule_steps - here) / (end_step - phase.start)
    position = offset + (step - origin) * rate
    return position


def phase_record(phases: list[Phase], index: int) -> dict:
    """The one record of the phase in a checkpoint (StageSwitch's state): plain values only (weights_only loads).

    ``stage`` and ``switched_at`` repeat the phase number and start under the names of the two-stage records
    older readers know."""
    phase = phases[index]
    return {
        "phase": index,
        "start": phase.start,
        "attention": phase.attention,
        "phases": [asdict(p) for p in phases],
        "stage": index + 1,
        "switched_at": phase.start if index else None,
    }
