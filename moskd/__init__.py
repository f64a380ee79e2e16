"""moskd: multi-student knowledge distillation with a learned per-image router.

The shared core. Stages (teacher/, students/, selector/, inference/) import from here;
nothing here imports a stage, except the umbrella CLI, which only dispatches.
"""

__version__ = "0.1.0"
