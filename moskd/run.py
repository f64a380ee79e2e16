"""The run directory: every path of its layout, finding and loading what the stages wrote there,
and atomic writes of the files that mark progress.

All stages of one experiment share one folder (DESIGN.md, "Data flow and the run directory"):

    RUN/teacher/           best.pt last.pt metrics.jsonl config.yaml summary.json curves.png
                           cache/views-k<K>/ (the teacher-output cache)
    RUN/students/<name>/   the same files; <arch> distilled, <arch>-baseline trained without a teacher
    RUN/selector/          the same files and labels.pt
    RUN/policy.json        the routing policy (moskd.policy), fitted on `select` by `moskd policy`
    RUN/report.json report.md plots/*.png eval/{select,test[,spare]}.npz eval/meta.json
    RUN/report-limit<N>/   a `--limit N` evaluation (the same report files), beside the full one
    RUN/sweep/<run>/       `moskd sweep` runs; RUN/sweep/<arch>-{results.md,results.csv,runs.csv}
    RUN/seed<k>/           with `--seeds`: one whole run per seed; RUN/seeds.json, RUN/seeds.md
    RUN/pipeline_timings.json

No other module spells one of these paths: each asks `RunDir` (or the `StageDir` of a stage) for
it, so the layout can be read, and changed, here alone. The loaders need only checkpoints and
moskd.models, so this core module imports no stage; torch is imported when a loader runs, so
code that only needs paths (the umbrella CLI, the pipeline's bookkeeping) stays light.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from moskd.errors import MoskdError
from moskd.loaded import BASELINE_SUFFIX, Student, check_same_split, is_baseline, load_teacher

if TYPE_CHECKING:
    from torch import nn



# ---------------------------------------------------------------- the layout


@dataclass(frozen=True)
class StageDir:
    """One stage's folder and the files the training engine writes into it."""
    path: Path

    @property
    def best(self) -> Path:  # weights + model card: what inference needs
        return self.path / "best.pt"

    @property
    def last(self) -> Path:  # everything --resume needs
        return self.path / "last.pt"

    @property
    def metrics(self) -> Path:  # one JSON line per epoch
        return self.path / "metrics.jsonl"

    @property
    def config(self) -> Path:  # the resolved config
        return self.path / "config.yaml"

    @property
    def summary(self) -> Path:  # written last: the stage's completion marker
        return self.path / "summary.json"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def labels(self) -> Path:  # the selector's training labels
        return self.path / "labels.pt"

    @property
    def finished(self) -> bool:
        return self.summary.is_file()

    def cache(self, k: int) -> Path:
        """The teacher-logit cache for K views (only the teacher's folder holds one)."""
        return self.path / "cache" / f"views-k{k}"  # a folder (students/cache.py); -top<T> with --teacher-topk

    def partition(self, method: str) -> Path:
        """The class partition of `StudentTrain --complementary METHOD` (only the teacher's folder holds one)."""
        return self.path / f"partition-{method}.json"


@dataclass(frozen=True)
class ReportDir:
    """Where one evaluation's report, plots and per-image arrays go."""
    path: Path

    @property
    def json(self) -> Path:
        return self.path / "report.json"

    @property
    def md(self) -> Path:
        return self.path / "report.md"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    def eval_arrays(self, split: str) -> Path:
        return self.eval / f"{split}.npz"

    @property
    def eval_meta(self) -> Path:
        return self.eval / "meta.json"

    @property
    def policy(self) -> Path:
        return self.path / "policy.json"


# The stages in pipeline order: what each leaves in the run directory and the command that makes it.
# (Which stage *modules* exist is for the stages to declare, see moskd.stages; these are the layout's
# folders and the console scripts DESIGN.md names for them.)
PREREQUISITES = {  # stage: (what it leaves, the command that makes it)
    "teacher": ("teacher", "teacherTrain --run-dir {run}"),
    "students": ("distilled students",
                 "StudentTrain --run-dir {run} --model 1` and `StudentTrain --run-dir {run} --model 2"),
    "selector": ("selector", "trainSelector --run-dir {run}"),
}


class RunDir:
    """One experiment's run directory: every path of its layout, and what its stages wrote."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    # ---- stage folders
    @property
    def teacher(self) -> StageDir:
        return StageDir(self.root / "teacher")

    @property
    def students_root(self) -> Path:
        return self.root / "students"

    def student(self, name: str) -> StageDir:
        return StageDir(self.students_root / name)

    @staticmethod
    def student_name(arch: str, baseline: bool = False) -> str:
        """The folder name of a student: its architecture, with -baseline when trained without a teacher."""
        return f"{arch}{BASELINE_SUFFIX}" if baseline else arch

    @property
    def selector(self) -> StageDir:
        return StageDir(self.root / "selector")

    def teacher_cache(self, k: int) -> Path:
        return self.teacher.cache(k)

    # ---- the sweep
    @property
    def sweep_root(self) -> Path:
        return self.root / "sweep"

    def sweep_run(self, name: str) -> StageDir:
        return StageDir(self.sweep_root / name)

    def sweep_table(self, arch: str, kind: str, ext: str) -> Path:
        """RUN/sweep/<arch>-<kind>.<ext>: kind results (mean ± std) or runs (one row per run)."""
        return self.sweep_root / f"{arch}-{kind}.{ext}"

    # ---- evaluation
    def report(self, limit: int | None = None) -> ReportDir:
        """The full report lives in RUN itself; a `--limit N` one (unless N is the limit the run was
        trained with, so that it covers the run's whole test split) in RUN/report-limit<N>/, beside
        it, never over it."""
        if limit is None or limit == self.trained_limit():
            return ReportDir(self.root)
        return ReportDir(self.root / f"report-limit{limit}")

    def trained_limit(self) -> int | None:
        """The --limit the run's selector was trained with (a smoke run's images per split), if any."""
        config = self.selector.config
        if config.is_file():
            try:
                return (yaml.safe_load(config.read_text()) or {}).get("limit")
            except yaml.YAMLError:
                pass
        if self.selector.best.is_file():
            from moskd.checkpoint import read_checkpoint_file

            return ((read_checkpoint_file(self.selector.best) or {}).get("config") or {}).get("limit")
        return None

    # ---- several seeds and the pipeline
    def seed(self, k: int) -> RunDir:
        return RunDir(self.root / f"seed{k}")

    @property
    def seeds_json(self) -> Path:
        return self.root / "seeds.json"

    @property
    def seeds_md(self) -> Path:
        return self.root / "seeds.md"

    @property
    def pipeline_timings(self) -> Path:
        return self.root / "pipeline_timings.json"

    # ---- finding what the stages wrote
    def marker(self, stage: str) -> Path:
        """The file whose presence says a stage has run (a student: any folder's best.pt)."""
        if stage == "students":
            return self.student("*").best
        return {"teacher": self.teacher, "selector": self.selector}[stage].best

    def has(self, stage: str) -> bool:
        if stage == "students":
            return bool(self.student_dirs())
        return self.marker(stage).is_file()

    def student_dirs(self) -> list[StageDir]:
        """Every student folder holding a best.pt, by name."""
        root = self.students_root
        if not root.is_dir():
            return []
        return [StageDir(p) for p in sorted(root.iterdir()) if (p / "best.pt").is_file()]

    def require(self, *stages: str, also: str = "") -> None:
        """Refuse, in one line, a run directory that does not exist or lacks a stage it needs; the line
        names the first missing stage (where the run stopped) and the command that makes it."""
        hint = f" {also}" if also else ""
        first = PREREQUISITES["teacher"][1].format(run=self.root)
        if not self.root.is_dir():
            raise MoskdError(f"{self.root}: no such run directory; check --run-dir, or start the run with "
                             f"`{first}` (or `moskd pipeline --run-dir {self.root}`){hint}")
        order = list(PREREQUISITES)
        missing = [s for s in order if s in stages and not self.has(s)]
        if not missing:
            return
        i = order.index(missing[0])
        while i > 0 and not self.has(order[i - 1]):  # earlier stages missing too: the run stopped there
            i -= 1
        what, command = PREREQUISITES[order[i]]
        raise MoskdError(f"{self.root}: no {what} yet ({self.marker(order[i])} not found); "
                         f"run `{command.format(run=self.root)}` first{hint}")

    def discover_students(self) -> tuple[list[str], list[str]]:
        """(distilled, baseline) student folder names of the run, each sorted by name."""
        from moskd.checkpoint import load_checkpoint

        distilled, baselines = [], []
        for d in self.student_dirs():
            card = load_checkpoint(d.best, role="student")["card"]
            (baselines if is_baseline(d.path.name, card) else distilled).append(d.path.name)
        return distilled, baselines

    # ---- loading
    def load_teacher(self, **kw) -> tuple[nn.Module, dict]:
        """The run's own teacher (see load_teacher)."""
        self.require("teacher")
        return load_teacher(self.teacher.best, **kw)

    def load_student(self, name: str, *, dataset: str | None = None, num_classes: int | None = None,
                     split: dict | None = None, device="cpu") -> Student:
        """The student in RUN/students/<name>/, its card checked against dataset, classes and split."""
        from moskd.checkpoint import load_checkpoint
        from moskd.models import build_model_from_checkpoint
        from moskd.profile import count_macs

        path = self.student(name).best
        if not path.is_file():
            self.require("students")  # an empty run: say where it stopped
            arch = name[: -len(BASELINE_SUFFIX)] if name.endswith(BASELINE_SUFFIX) else name
            extra = " --no-teacher" if name.endswith(BASELINE_SUFFIX) else ""
            raise MoskdError(f"{path} not found; run StudentTrain --model {arch}{extra} --run-dir {self.root} first")
        ckpt = load_checkpoint(path, role="student", dataset=dataset, num_classes=num_classes,
                               hint="retrain the student on this run's dataset")
        check_same_split(ckpt.get("config") or {}, split or {}, path)
        model = build_model_from_checkpoint(ckpt).to(device)
        card = ckpt["card"]
        return Student(name, path, card, model, count_macs(model, card["input_size"]), ckpt.get("config") or {})

    def load_students(self, names: list[str] | None = None, **kw) -> list[Student]:
        """The students to route between, cheapest (fewest MACs) first, each adapted to take the
        batch normalised as the cheapest one's. names: folders under RUN/students; default every
        distilled (not baseline) student."""
        from moskd.models import adapt_input

        if not names:
            self.require("students")
            names, _ = self.discover_students()
            if len(names) < 2:
                have = f" (found: {', '.join(names)})" if names else ""
                raise MoskdError(f"{self.students_root} holds fewer than two distilled students{have}; run "
                                 f"StudentTrain --model 1 --run-dir {self.root} and StudentTrain --model 2 "
                                 f"--run-dir {self.root} first")
        if len(set(names)) < 2:
            raise MoskdError(f"--students names {' '.join(names)}: routing needs at least two different students")
        students = sorted((self.load_student(n, **kw) for n in dict.fromkeys(names)), key=lambda s: (s.macs, s.name))
        for s in students[1:]:  # one preprocessed batch feeds them all: the cheapest student's normalisation
            s.model = adapt_input(s.model, s.card, students[0].card, s.path)
        return students

    def load_selector(self) -> dict:
        """The selector checkpoint (weights and card: route order, costs, operating point)."""
        from moskd.checkpoint import load_checkpoint

        self.require("students", "selector")  # not the teacher: students may have learnt from another
        path = self.selector.best
        ckpt = load_checkpoint(path, role="selector", hint="rerun trainSelector")
        if not ckpt["card"].get("students"):
            raise MoskdError(f"{path}: selector card names no students; "
                             f"rerun trainSelector --run-dir {self.root} --force")
        return ckpt
