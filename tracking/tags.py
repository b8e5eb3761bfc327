"""The names hpsearch records in MLflow: the tags (and the one metric) that writers and readers share.

Plain constants with no imports, so `search`, `studies` and `tracking` name a tag the same way. A parent run
is one `hpsearch run` (kind "study"); its child runs are trials, retrainings, folds and ensembles.
"""

KIND = "hpsearch.kind"  # "study" on a parent run, "trial" on a child run
STUDY = "hpsearch.study"
TRIAL_ID = "hpsearch.trial_id"
STATE = "hpsearch.state"  # completed | pruned | failed | running
REASON = "hpsearch.reason"  # why a trial failed or stopped itself
EPOCHS = "hpsearch.epochs"
BEST_EPOCH = "hpsearch.best_epoch"
TRAIN_SECONDS = "hpsearch.train_seconds"  # a trial's seconds of its own training (ASHA's axis under budget: seconds)
METRIC = "hpsearch.metric"
MODE = "hpsearch.mode"
MODEL_URI = "hpsearch.model_uri"
BEST_TRIAL = "hpsearch.best_trial"
CHECKPOINT_DIGEST = "hpsearch.checkpoint_sha256"
TEST_DIGEST = "hpsearch.test_checkpoint_sha256"
OPTUNA_STUDY = "hpsearch.optuna_study"  # the Optuna study (in optuna/STUDY.journal) of this invocation
OPTUNA_JOURNAL = "hpsearch.optuna_journal"  # that journal's path (search/sampling/_journal.py)
NODE = "hpsearch.node"  # the Ray node a trial ran on (its last attempt)
RAY_EXPERIMENT = "hpsearch.ray_experiment"  # Ray Tune's experiment folder of this invocation
TRIAL_DIR = "hpsearch.trial_dir"  # where Ray keeps the trial's stdout, stderr, error.txt and checkpoint
SPEC_DIGEST = "hpsearch.spec_sha256"  # the effective study spec's hash: a --resume must match it
ELAPSED = "hpsearch.elapsed_s"  # seconds the study has run, over all its resumes (for --hours)
RESUMES = "hpsearch.resumes"  # how many times the run was resumed
PARAMS = "hpsearch.params"  # the trial's exact config as JSON (params are strings; this keeps types)
BEST_VALUE = "best_value"  # a metric on child runs (the trial's best) and the parent (the study's best)
SWEPT = "hpsearch.swept"  # on the parent once its sweep has ended: what is left is finishing the best model
BEST_CHECKPOINT = "hpsearch.best_checkpoint"  # the folder of the best trial's Ray checkpoint, which finishing reads
FINISH = "hpsearch.finish."  # + a step below: "done", "none: why" (nothing to do), "failed: why" (--resume retries)
FINISH_STEPS = {"checkpoint": "no best checkpoint logged", "test": "no test evaluation", "export": "no servable model"}

COUNT = "hpsearch.count."  # + state: the sweep's trials by state, on the parent run
NO_MODEL = "hpsearch.no_model"  # why the run has no servable model: what `promote` says
TRAINABLE = "hpsearch.trainable"  # the trainable's name or import path, on the parent run
SPLIT_SEED = "hpsearch.split_seed"  # the seed of the train/val/test split (and of the folds)
PYTHON = "hpsearch.python"  # the driver's Python version
GIT_COMMIT = "hpsearch.git_commit"  # the user's project's commit, where it is a git checkout
VERSION = "hpsearch.version."  # + package: the versions of the packages a sweep ran with
DATA = "hpsearch.data."  # + key: the data set's identity (its files' digest, size...)
RESEED_OF = "hpsearch.reseed_of"  # on a retraining's run: the trial whose configuration it retrains
FOLD_OF = "hpsearch.fold"  # "i/k" on a fold's run (1-based)
FOLDS_DIGEST = "hpsearch.folds_sha256"  # the fold assignment's digest: the same data, k and split_seed
MEMBERS = "hpsearch.members"  # an ensemble's members, as JSON (also a registry tag: `members`)
COST = "hpsearch.cost"  # an ensemble's cost beside the single model's, as JSON

# The kinds of run (the KIND tag's values).
STUDY_RUN, TRIAL_RUN, RESEED_RUN, FOLD_RUN, ENSEMBLE_RUN = "study", "trial", "reseed", "fold", "ensemble"

# On a registered model version: whether it serves one model or an ensemble.
MODEL_KIND, SINGLE, ENSEMBLE = "model_kind", "single", "ensemble"
