"""moskd: multi-student knowledge distillation with a learned per-image router.

The shared core. Stages (teacher/, students/, selector/, inference/) import from here; nothing
here imports a stage: the umbrella CLI and the pipeline dispatch to what each stage declares in its
stage.py (moskd.stages), and moskd.run owns the run directory's layout.
"""

__version__ = "0.1.0"
