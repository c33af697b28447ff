"""Drive a method through its planned stages as the engine's epoch loop does (for unit tests)."""

from gaal_cli.methods.stages import PlannedStage, plan_stages, stage_at


def plan_for(method, epochs: int) -> list[PlannedStage]:
    return plan_stages(method.stages(method.settings, epochs), epochs)


def enter_epoch(method, plan: list[PlannedStage], epoch: int) -> PlannedStage:
    """What engine.fit does before an epoch: set the stage, its hook at its first epoch, the epoch hook."""
    stage = stage_at(plan, epoch)
    method.stage = stage
    if epoch == stage.start:
        method.on_stage_start(stage)
    method.on_epoch_start(epoch)
    return stage
