"""Mutation check: does every test able to catch a mistake actually catch it?

Each entry of MUTATIONS is one small, deliberate mistake: (id, file, exact old snippet, new
snippet, test node ids, what it means). For each, the repository is copied to a temporary folder
(never changed in place), the snippet is replaced there, and only the listed tests run against
the copy (`python -m pytest -x -q NODES`, PYTHONPATH = the copy). A failing run KILLS the mutant;
a passing one lets it SURVIVE. The table names the test that killed each mutant.

    python benchmarks/mutation_check.py                 # all mutations, 2 at a time
    python benchmarks/mutation_check.py --only R1 K1    # some of them
    python benchmarks/mutation_check.py --list          # the table of mutations, nothing run

Exit status: 0 when every mutant is killed; 1 when one survives, a snippet is not found exactly
once (a stale entry: the code moved on, update the entry), or an unmutated baseline run of the
listed tests fails. Not part of CI: run it after changing the code or the tests (docs/TESTING.md).

To add a mutation, append a Mutation(...) to MUTATIONS: the old snippet must occur exactly once in
the file; list the fewest tests that should kill it.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "runs", "data", "__pycache__", ".pytest_cache",
                                     "*.egg-info", ".hypothesis", "*.pt")


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    means: str


T_ROUTER = "tests/test_router.py"
T_RUN = "tests/test_routed_run.py"
T_SEL = "tests/test_selector.py"
T_STU = "tests/test_students.py"
T_ENG = "tests/test_engine.py"
T_DATA = "tests/test_data.py"
T_CFG = "tests/test_configs.py"
LOADED = f"{T_ROUTER}::test_loaded_router_splits_images_as_the_reference_rule_says"
ROWS = f"{T_RUN}::test_inference_rows_name_the_model_that_answered"
BEST = f"{T_ENG}::test_best_pt_holds_the_best_select_epoch_and_finish_scores_it"
LOSS_FLAGS = f"{T_STU}::test_cached_run_hands_alpha_temperature_and_smoothing_to_the_loss"
SEL_FLAGS = f"{T_SEL}::test_selector_flags_reach_the_card_the_metric_and_the_holdout"
CFG_ORDER = f"{T_CFG}::test_flags_override_the_section_which_overrides_the_top_level"
T_REP = "tests/test_report.py"
T_ONE = "tests/test_one_path.py"
T_SR = "tests/test_selector_routing.py"
T_FM = "tests/test_fashion.py"
T_SEEDS = "tests/test_seeds.py"
T_STRICT = "tests/test_strict_config.py"
T_REF = "tests/test_refusals.py"
T_IN = "tests/test_input_checks.py"
T_INF = "tests/test_inference.py"
BY_HAND = f"{T_REP}::test_summarize_by_hand"
CHOICES = "tests/test_choices_on_select.py"
ATOMIC = "tests/test_atomic.py"
T_RUN_DIR = "tests/test_run.py"

MUTATIONS: list[Mutation] = [
    # ---------------------------------------------------------------- router and inference
    Mutation("R7", "inference/router.py", "if s.macs != macs:", "if False:",
             (f"{T_RUN}::test_router_refuses_a_student_changed_after_the_selector_was_trained",),
             "router accepts a student changed after the selector was trained"),
    Mutation("R8", "inference/router.py", 'if s.card["num_classes"] != classes:', "if False:",
             (f"{T_RUN}::test_router_refuses_students_with_different_class_counts",),
             "router accepts students with different class counts"),
    Mutation("R12", "inference/files.py", "predictor.route_names[int(out.routes[j])],",
             "predictor.names[min(int(out.routes[j]), len(predictor.names) - 1)],", (ROWS,),
             "prediction rows name a student where the teacher answered"),
    # ---------------------------------------------------------------- selector labels and training
    Mutation("S1", "selector/labels.py", "return torch.where(correct.any(1), first, torch.full_like(first, -1))",
             "return first", (f"{T_SEL}::test_preferred_route_is_the_cheapest_correct_student_or_none",),
             "images no student gets right are labelled with student 0"),
    Mutation("S2", "selector/labels.py", "one = right == 1", "one = right >= 1",
             (f"{T_SEL}::test_labels_from_logits_count_exactly_one_right",),
             "'exactly one right' counts images any student gets right"),
    Mutation("S3", "selector/labels.py", "parts_loader(data, [(split, None)],", 'parts_loader(data, [("train", None)],',
             (f"{T_SEL}::test_train_selector_labels_use_select_not_test",),
             "selector labels computed on train instead of select"),
    Mutation("S4", "selector/train.py", "return F.binary_cross_entropy_with_logits(logits, batch[2])",
             "return F.binary_cross_entropy_with_logits(logits, 1 - batch[2])",
             (f"{T_SEL}::test_selector_learns_which_student_is_right",),
             "selector trained to predict which student is wrong"),
    Mutation("S5", "selector/train.py", "held = min(n - 1, max(1, round(fraction * n)))",
             "held = min(n - 1, max(1, round((1 - fraction) * n)))",
             (f"{T_SEL}::test_holdout_split_is_deterministic_disjoint_and_complete",),
             "--holdout-fraction holds out the complement"),
    Mutation("S6", "selector/train.py", "metric=routed_score(cfg.tie_margin)", "metric=routed_score(0.05)",
             (SEL_FLAGS,), "selector checkpoint chosen with the default tie margin, not --tie-margin"),
    Mutation("S7", "selector/train.py", '"tie_margin": cfg.tie_margin,', '"tie_margin": 0.05,', (SEL_FLAGS,),
             "selector card records the default tie margin, not --tie-margin"),
    # ---------------------------------------------------------------- KD losses and the teacher cache
    Mutation("K1", "students/losses.py",
             "            logits, batch[-1], batch[1], alpha=alpha, temperature=temperature, kd_loss=kd_loss,",
             "            logits, batch[-1], batch[1], alpha=alpha, temperature=1.0, kd_loss=kd_loss,", (LOSS_FLAGS,),
             "cached-teacher objective ignores --temperature (always T = 1)"),
    Mutation("K2", "students/losses.py",
             "            logits, batch[-1], batch[1], alpha=alpha, temperature=temperature, kd_loss=kd_loss,",
             "            logits, batch[-1], batch[1], alpha=0.5, temperature=temperature, kd_loss=kd_loss,",
             (LOSS_FLAGS,), "cached-teacher objective ignores --alpha"),
    Mutation("K3", "students/losses.py",
             "            logits, t, batch[1], alpha=alpha, temperature=temperature, kd_loss=kd_loss,",
             "            logits, t, batch[1], alpha=alpha, temperature=temperature, kd_loss=\"kl\",",
             (f"{T_STU}::test_online_teacher_trains_too",), "online-teacher objective ignores --kd-loss"),
    Mutation("K4", "students/losses.py", "* temperature**2", "* temperature",
             (f"{T_STU}::test_kl_term_is_t_squared_scaled_batchmean_kl",), "KL term scaled by T, not T^2"),
    Mutation("K5", "students/losses.py", 'reduction="none", log_target=True).sum(1)',
             'reduction="none", log_target=True).mean(1)',
             (f"{T_STU}::test_kl_term_is_t_squared_scaled_batchmean_kl",),
             "KL averaged over classes too (reduction mean)"),
    Mutation("K6", "students/losses.py", 'return {"loss": alpha * parts["ce"] + (1.0 - alpha) * parts["kd"], **parts}',
             'return {"loss": (1.0 - alpha) * parts["ce"] + alpha * parts["kd"], **parts}',
             (f"{T_STU}::test_alpha_mixes_hard_and_soft_terms",),
             "alpha weighs the teacher term instead of the labels"),
    Mutation("K7", "students/losses.py", "F.kl_div(log_p_s, log_p_t,", "F.kl_div(log_p_t, log_p_s,",
             (f"{T_STU}::test_kl_term_is_t_squared_scaled_batchmean_kl",), "KL direction reversed"),
    Mutation("W1", "students/losses.py", "    return (values * weights).sum() / weights.sum()",
             "    return (values * weights).mean()",
             ("tests/test_students.py::test_per_image_weights_give_the_weighted_mean_of_each_term",),
             "per-image weights not normalised by their sum"),
    Mutation("W2", "students/complementary.py", "    order = sorted(hardness, key=lambda k: (hardness[k], k))",
             "    order = sorted(hardness, key=lambda k: (-hardness[k], k))",
             ("tests/test_complementary.py::test_confusable_classes_cluster_together_hardest_cluster_first",),
             "easiest cluster handed to the first owner"),
    Mutation("W3", "students/complementary.py",
             "    return torch.where(owned[targets.long()], torch.tensor(1.0), torch.tensor(float(other_weight)))",
             "    return torch.where(owned[targets.long()], torch.tensor(float(other_weight)), torch.tensor(1.0))",
             ("tests/test_complementary.py::test_image_weights_own_classes_one_others_the_other_weight",),
             "a student weighs the other students' classes 1 and its own other_weight"),
    Mutation("K8", "students/cache.py", '"teacher_sha256": file_sha256(teacher_path),', '"teacher_sha256": 0,',
             (f"{T_STU}::test_changed_teacher_or_data_rebuilds_the_cache",),
             "cache key ignores the teacher checkpoint: a retrained teacher's stale logits reused"),
    Mutation("K9", "moskd/loader.py", "extra.append(logits[i, k].to(self.device, torch.float32))",
             "extra.append(logits[i, 0].to(self.device, torch.float32))",
             (f"{T_STU}::test_cached_logits_equal_the_online_teachers_for_the_same_view",),
             "loader hands view 0's teacher logits whatever view the image shows"),
    # ---------------------------------------------------------------- checkpoint choice and the optimizer
    Mutation("E1", "moskd/engine.py", "if improved:  # best.pt", "if True:  # best.pt", (BEST,),
             "best.pt is always the last epoch"),
    Mutation("E2", "moskd/engine.py", "improved = select_metric > state.best", "improved = select_metric >= state.best",
             (BEST,), "a tie on select moves best.pt to the later epoch"),
    Mutation("E3", "moskd/engine.py", "best = load_checkpoint(StageDir(stage.out_dir).best, role=stage.role)",
             "best = load_checkpoint(StageDir(stage.out_dir).last, role=stage.role)", (BEST,),
             "the test score in summary.json comes from the last epoch, not best.pt"),
    Mutation("E4", "moskd/engine.py", "lr=cfg.lr, weight_decay=cfg.weight_decay,", "lr=cfg.lr, weight_decay=0.05,",
             (f"{T_ENG}::test_training_flags_reach_the_optimizer_and_the_objective",),
             "--weight-decay never reaches the optimizer"),
    # ---------------------------------------------------------------- data splits
    Mutation("D1", "moskd/data.py", "tr, sel = pool[tr], pool[sel]", "tr, sel = pool[tr], pool[tr][: len(sel)]",
             (f"{T_DATA}::test_digits_splits_disjoint_cover_and_reproducible",), "select overlaps train"),
    Mutation("D2", "moskd/data.py", "_stratified(y[pool], select_fraction, split_seed + 1)",
             "_stratified(y[pool], select_fraction, 1)",
             (f"{T_DATA}::test_split_seed_alone_moves_select_out_of_a_fixed_pool",),
             "--split-seed does not move select"),
    Mutation("D3", "moskd/data.py", 'train = splits["train"].images.float().div_(255)',
             'train = splits["select"].images.float().div_(255)',
             (f"{T_DATA}::test_normalisation_statistics_come_from_the_train_split_only",),
             "normalisation statistics taken from select"),
    Mutation("D4", "moskd/data.py", "np.ascontiguousarray(a[:limit])",
             "np.ascontiguousarray(a[-limit:] if limit else a)",
             (f"{T_DATA}::test_split_seed_changes_the_split_and_limit_slices",),
             "--limit keeps the last images of a split, not the first"),
    # ---------------------------------------------------------------- config parsing
    Mutation("C1", "moskd/config.py", "                merged[_key(k)] = v\n",
             "                merged.setdefault(_key(k), v)\n",
             (CFG_ORDER,),
             "top-level YAML keys beat the stage's own section"),
    Mutation("C2", "moskd/config.py",
             "if inner is Any or isinstance(value, inner) and not (inner is int and isinstance(value, bool)):",
             "if inner is Any or isinstance(value, inner):", (CFG_ORDER,), "YAML `true` accepted as an int"),
    Mutation("C3", "moskd/config.py",
             "    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})\n",
             "    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}\n"
             "    values.update(load_yaml_overrides(cls, args.config, section) if args.config else {})\n"
             "    return cls(**values)\n",
             (CFG_ORDER,), "YAML values override command-line flags"),
    Mutation("C4", "moskd/config.py", "                if _key(k) not in fields[name]:\n", "                if False:\n", (CFG_ORDER,),
             "a misspelt key in a stage section is silently ignored"),
    # ---------------------------------------------------------------- curves, report, operating point
    Mutation("V5", "inference/curves.py", "means[start:start + k] = diff[rng.integers(0, n, size=(k, n))].mean(1)",
             "means[start:start + k] = diff.mean()",
             (f"{T_REP}::test_paired_bootstrap_brackets_the_mean_and_is_exact_for_constant_differences",),
             "bootstrap never resamples: a zero-width CI"),
    Mutation("V7", "moskd/calibration.py", "total += inb.mean() * abs(right[inb].mean() - conf[inb].mean())",
             "total += inb.mean() * (right[inb].mean() - conf[inb].mean())", (f"{T_REP}::test_ece_by_hand",),
             "ECE lets over- and under-confidence cancel"),
    Mutation("V9", "inference/summary.py", "random_right = sum(share[i] * right[k].astype(np.float64)",
             "random_right = sum(share[0] * right[k].astype(np.float64)", (BY_HAND,),
             "random router's expectation uses the wrong shares"),
    Mutation("V10", "selector/train.py", "        scale, bias = fit_platt(logits, correct)\n",
             "        scale, bias = torch.ones(logits.shape[1]), torch.zeros(logits.shape[1])\n",
             (f"{T_SR}::test_trained_selector_is_calibrated_and_hands_its_knob_to_the_router",),
             "the selector is never calibrated"),
    Mutation("V11", "moskd/choose.py", "return max(points, key=lambda p: (p.accuracy, -p.macs))",
             "return max(points, key=lambda p: (p.accuracy, p.macs))",
             (f"{T_SR}::test_operating_knob_is_the_most_accurate_then_cheapest",),
             "operating point ties go to more MACs"),
    Mutation("V12", "selector/train.py", 'TARGET_LABELS = {"prob": "true_prob", "correct": "correct", "owner": "owner"}',
             'TARGET_LABELS = {"prob": "correct", "correct": "correct", "owner": "owner"}', (f"{T_SR}::test_selector_target_reaches_the_loss",),
             "--target prob silently trains on 0/1 correctness"),
    Mutation("V13", "moskd/seeds.py", '"std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}',
             '"std": float(arr.std()) if len(arr) > 1 else 0.0}',
             (f"{T_SEEDS}::test_seeds_share_the_teacher_and_aggregate_each_report",), "population instead of sample std"),
    Mutation("V14", "moskd/datasets.py", "return x[:, None], y.astype(np.int64), xt[:, None], yt.astype(np.int64)",
             "return xt[:, None], yt.astype(np.int64), x[:, None], y.astype(np.int64)",
             (f"{T_FM}::test_fashion_mnist_reads_the_official_files_flat",), "fashion-mnist train and test files swapped"),
    Mutation("V15", "moskd/runtime.py", 'return torch.device("cuda", local_rank if world > 1 else 0)',
             'return torch.device("cuda", 0)', (f"{T_FM}::test_device_strings_get_an_explicit_index",),
             "every torchrun rank takes GPU 0"),
    # ---------------------------------------------------------------- strict parsing and early refusals
    Mutation("P1", "moskd/config.py", "        else:\n            raise MoskdError(f\"config file {path}: unknown setting or section",
             "        elif False:\n            raise MoskdError(f\"config file {path}: unknown setting or section",
             (f"{T_STRICT}::test_unknown_keys_and_sections_are_named_with_the_nearest",),
             "an unknown top-level key or section is silently ignored"),
    Mutation("P2", "moskd/values.py", 'if values.get("resume") and values.get("force"):', "if False:",
             (f"{T_REF}::test_bad_values_are_one_line_and_exit_2",), "--resume with --force accepted"),
    Mutation("P3", "teacher/config.py", "from moskd.settings import TrainConfig\n",
             "from moskd.settings import TrainConfig\nimport torch  # noqa: F401\n",
             (f"{T_STRICT}::test_help_answers_without_importing_torch",), "teacherTrain --help loads torch"),
    Mutation("P4", "moskd/datasets.py", "if len(classes) < 2:", "if len(classes) < 1:",
             (f"{T_IN}::test_a_folder_dataset_needs_two_classes",), "a one-class folder dataset trains"),
    Mutation("P5", "inference/files.py", "        rows[i] = failed_row(chunk[\"paths\"][i], why)\n",
             "        pass\n",
             (f"{T_INF}::test_output_to_stdout_has_a_row_per_input_in_order_and_quiet_drops_the_table",),
             "an unreadable image gets no row"),
    Mutation("P6", "students/train.py", "    warn_if_poor_teacher(tpath, data.num_classes)\n", "",
             (f"{T_IN}::test_a_student_warns_once_about_a_teacher_far_below_its_target",),
             "a student learns from a poor teacher without a word"),
    # ---------------------------------------------------------------- choices on select, never on test
    # ---------------------------------------------------------------- the routing policy, on every path
    Mutation("M1", "moskd/policy.py", "s = s - np.float32(knob) * np.asarray(costs, dtype=np.float32)",
             "s = s + np.float32(knob) * np.asarray(costs, dtype=np.float32)",
             (f"{T_REP}::test_selector_knob_charges_relative_macs",), "the cost knob rewards MACs instead of charging them"),
    Mutation("M2", "moskd/policy.py", "go = step.scores(answer) < step.threshold", "go = step.scores(answer) <= step.threshold",
             (f"{T_REP}::test_cascade_escalates_strictly_below_the_threshold",),
             "an image whose deferral score equals the threshold goes on (<= instead of <)"),
    Mutation("M3", "moskd/policy.py", "answer = sums[idx] / count[idx, None]", "answer = p",
             (f"{T_REP}::test_committee_answers_with_the_mean_of_every_model_run_so_far",),
             "a committee answers with the last model alone"),
    Mutation("M4", "moskd/policy.py", "macs[idx] += policy.macs[k]", "macs[idx] = policy.macs[k]",
             (f"{T_REP}::test_three_step_cascade_goes_on_step_by_step",), "an image is charged only its last model"),
    Mutation("M5", "moskd/policy.py", "mask[idx] |= 1 << k", "mask[idx] = 1 << k",
             (f"{T_REP}::test_three_step_cascade_goes_on_step_by_step",), "the models mask forgets earlier models"),
    Mutation("M6", "moskd/policy.py", "macs = np.full(n, policy.selector_macs, dtype=np.float64)",
             "macs = np.zeros(n, dtype=np.float64)",
             (f"{T_REP}::test_selector_policy_runs_from_all_dearest_to_all_cheapest",), "the selector's MACs forgotten"),
    Mutation("M7", "inference/policy_fit.py", "return sorted({0.0, ALWAYS, ", "return sorted({0.0, ",
             (f"{T_REP}::test_cascade_thresholds_start_at_never_and_end_at_always",),
             "deferral thresholds stop short of always deferring"),
    Mutation("M8", "inference/router.py", "return self.models[k](sub).float().cpu().numpy()",
             "return self.models[min(k, 1)](sub).float().cpu().numpy()",
             (f"{T_ONE}::test_inference_run_dir_follows_the_policy",), "the run's router answers the teacher's images with a student"),
    Mutation("M9", "inference/bundle.py", "lambda k, idx: self.programs[k](np.ascontiguousarray(x[idx]))",
             "lambda k, idx: self.programs[k](np.ascontiguousarray(x[idx[::-1]]))",
             (f"{T_ONE}::test_bundle_follows_the_policy",), "a bundle sub-batch comes back in the wrong order"),
    Mutation("M10", "inference/export.py", '"policy": policy.to_dict(),', '"policy": {**policy.to_dict(), "combine": "replace"},',
             (f"{T_ONE}::test_bundle_follows_the_policy",), "the bundle's manifest carries another policy than the run's"),
    # ---------------------------------------------------------------- every choice on select
    Mutation("Q1", "inference/summary.py", 'best = max(names, key=lambda k: (sel_acc[k], -costs[k]["macs"]))',
             'best = max(names, key=lambda k: (acc[k], -costs[k]["macs"]))', (BY_HAND, CHOICES),
             "the best single student chosen on test"),
    Mutation("Q2", "inference/summary.py", "best = choose_point([self.sel[i] for i in idx], target, budget)",
             "best = choose_point([self.test[i] for i in idx], target, budget)", (CHOICES,),
             "every family's point (the cascade at equal MACs included) chosen on test"),
    Mutation("Q3", "inference/summary.py", "candidates(setup, choose, learn), choose, test, scored)",
             "candidates(setup, test, learn), choose, test, scored)", (CHOICES,),
             "the threshold and knob grids taken from test"),
    Mutation("Q4", "inference/summary.py", "reach = [i for i in idx if points.sel[i].accuracy >= target - 1e-12]",
             "reach = [i for i in idx if points.test[i].accuracy >= target - 1e-12]", (CHOICES,),
             "iso-accuracy points picked on test curves"),
    Mutation("Q5", "inference/summary.py", "front = pareto([self.sel[i] for i in idx])",
             "front = pareto([self.test[i] for i in idx])", (CHOICES,), "the curves' points chosen on test"),
    Mutation("A5", "moskd/atomic.py", "return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))",
             "np.savez_compressed(path, **arrays)\n    return Path(path)", (ATOMIC,), "eval arrays written in place"),
    # ---------------------------------------------------------------- every writer atomic
    Mutation("A1", "moskd/atomic.py", "            os.fsync(f.fileno())  # the bytes are on disk before the name points at them\n",
             "", (ATOMIC,), "the one writer renames bytes that may not be on disk"),
    Mutation("A2", "moskd/atomic.py", "        os.replace(tmp, path)\n",
             "        Path(path).write_bytes(Path(tmp).read_bytes())\n        Path(tmp).unlink()\n",
             (ATOMIC, f"{T_RUN_DIR}::test_a_kill_during_the_write_leaves_the_old_file_whole"), "the one writer copies over the target in place"),
    Mutation("A3", "moskd/checkpoint.py", "    atomic_write(path, lambda f: torch.save(obj, f))",
             "    torch.save(obj, path)", (ATOMIC,), "checkpoints written in place"),
    Mutation("A4", "moskd/config.py", "    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))",
             "    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))", (ATOMIC,),
             "config.yaml written in place"),
    Mutation("A6", "moskd/plots.py", 'atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))',
             'fig.savefig(out, format="png", dpi=100)', (ATOMIC,), "curves.png written in place"),
    Mutation("A7", "moskd/engine.py", '    write_text(path, "".join(json.dumps(h) + "\\n" for h in history))',
             '    Path(path).write_text("".join(json.dumps(h) + "\\n" for h in history))', (ATOMIC,),
             "metrics.jsonl written in place"),
]


@dataclass
class Result:
    mutation: Mutation
    status: str  # KILLED | SURVIVED | STALE | ERROR
    by: str
    seconds: float


def copy_repo(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=COPY_IGNORE)
    return dest


def pytest_cmd(nodes) -> list[str]:
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *nodes]


def run_tests(repo: Path, nodes, timeout: float) -> tuple[int | None, str]:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.run(pytest_cmd(nodes), cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return proc.returncode, proc.stdout + proc.stderr


def first_failure(output: str) -> str:
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
    return m.group(1) if m else "?"


def check(m: Mutation, repo: Path, timeout: float) -> Result:
    """Apply m to the copy at `repo`, run its tests, restore the file."""
    t0 = time.perf_counter()
    path = repo / m.file
    original = path.read_text()
    if original.count(m.old) != 1:
        return Result(m, "STALE", f"old snippet found {original.count(m.old)} times in {m.file}", 0.0)
    path.write_text(original.replace(m.old, m.new))
    try:
        code, out = run_tests(repo, m.tests, timeout)
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - t0
    if code is None:
        return Result(m, "KILLED", f"timeout after {timeout:.0f}s", seconds)
    if code == 0:
        return Result(m, "SURVIVED", "-", seconds)
    if code in (1, 2) and re.search(r"^(FAILED|ERROR) ", out, flags=re.M):
        return Result(m, "KILLED", first_failure(out), seconds)
    return Result(m, "ERROR", f"pytest exit {code}: {out.strip().splitlines()[-1] if out.strip() else ''}", seconds)


def print_table(results: list[Result]) -> None:
    print(f"| {'id':<4} | {'file':<20} | {'result':<8} | {'s':>5} | killed by / why | mutation")
    print("|------|----------------------|----------|-------|-----------------|---------")
    for r in results:
        print(f"| {r.mutation.id:<4} | {r.mutation.file:<20} | {r.status:<8} | {r.seconds:5.1f} | {r.by} "
              f"| {r.mutation.means}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="ID", help="run only these mutation ids")
    p.add_argument("--jobs", type=int, default=2, help="mutants tested at once (one repository copy each)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a mutant's test run counts as killed")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of every listed test")
    p.add_argument("--list", action="store_true", help="print the mutations and their tests, run nothing")
    a = p.parse_args(argv)

    chosen = [m for m in MUTATIONS if not a.only or m.id in a.only]
    ids = [m.id for m in MUTATIONS]
    if len(set(ids)) != len(ids):
        print("duplicate mutation ids", file=sys.stderr)
        return 1
    if a.only and len(chosen) != len(set(a.only)):
        print(f"unknown ids: {sorted(set(a.only) - set(ids))}", file=sys.stderr)
        return 1
    if a.list:
        for m in chosen:
            print(f"{m.id:<4} {m.file:<20} {m.means}\n     tests: {' '.join(m.tests)}")
        return 0

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moskd-mutants-") as tmp:
        jobs = max(1, min(a.jobs, len(chosen)))
        repos = [copy_repo(Path(tmp) / f"repo{i}") for i in range(jobs)]
        if not a.no_baseline:
            nodes = sorted({n for m in chosen for n in m.tests})
            code, out = run_tests(repos[0], nodes, a.timeout * 3)
            if code != 0:
                print(f"baseline: the listed tests fail without any mutation (exit {code}):\n{out[-3000:]}")
                return 1
            print(f"baseline: {len(nodes)} listed test node(s) pass unmutated "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
        free = list(repos)

        def work(m: Mutation) -> Result:
            repo = free.pop()
            try:
                r = check(m, repo, a.timeout)
            finally:
                free.append(repo)
            print(f"  {m.id}: {r.status} ({r.seconds:.1f}s) {r.by}", flush=True)
            return r

        with ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(work, chosen))
    print()
    print_table(results)
    total = time.perf_counter() - t0
    counts = {s: sum(r.status == s for r in results) for s in ("KILLED", "SURVIVED", "STALE", "ERROR")}
    print(f"\n{len(results)} mutants: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items())
          + f"; total {total:.0f}s with {jobs} job(s)")
    return 0 if counts["KILLED"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
