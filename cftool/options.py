"""The names and defaults a user chooses among on the command line, each written here once.

The library's option dataclasses and registries take their names and defaults from here, and so does the command
line, whose `--help` and shell completion must not import torch: this module imports nothing but the standard
library. A registry (the fine-tuning methods, the merge methods, the benchmarks, the toy tasks) implements each name
declared here by naming its constant, so that a name is spelled once; its tests check that it implements them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Base models (cftool.zoo.base) --------------------------------------------------------------------------------------

TINY = "tiny"  # the embedded toy model
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"

# Running ------------------------------------------------------------------------------------------------------------

AUTO_DEVICE = "auto"  # the first GPU torch sees, else the CPU
DEVICES = (AUTO_DEVICE, "cpu", "cuda")  # and cuda:N, which cftool.cli.common.resolve_device reads
DEVICE = AUTO_DEVICE
SEED = 0
# DataLoader workers of every command that reads images. None: images are read in the command's own process, which
# starts no process, costs nothing on the embedded toy tasks and on cached image features (a frozen tower's images are
# encoded once), and behaves the same on every platform and under DDP; decoding a real dataset's JPEGs is what
# workers speed up, and --workers N asks for them there.
WORKERS = 0

# Data (cftool.data) -------------------------------------------------------------------------------------------------

# The kinds of a `--data KIND:NAME` spec (cftool.data.parse_source): a toy task, an ImageFolder, and CoOp's and
# MTIL's datasets under the data root.
TOY_DATA = "toy"
FOLDER_DATA = "folder"
COOP_DATA = "coop"
MTIL_DATA = "mtil"
DATA_SPEC_FORMS = f"{TOY_DATA}:TASK, {FOLDER_DATA}:PATH, {COOP_DATA}:NAME or {MTIL_DATA}:NAME"
ALL_CLASSES = "all"
BASE_CLASSES = "base"  # the first ceil(n/2) classes, as in CoOp
NOVEL_CLASSES = "novel"  # the others
CLASS_SUBSETS = (ALL_CLASSES, BASE_CLASSES, NOVEL_CLASSES)
CLASS_SUBSET = ALL_CLASSES
SPLITS = ("train", "val", "test")
EVAL_SPLIT = "test"
# Which validation images a few-shot run selects its checkpoint on: CoOp's draw of min(shots, 4) per class, or the
# whole split, as MergeTune's dataset files keep it once CoOp has run.
FEW_SHOT_VAL = "few-shot"
ALL_VAL = "all"
VAL_IMAGES = (FEW_SHOT_VAL, ALL_VAL)
VAL_IMAGE_SET = FEW_SHOT_VAL
# The benchmarks (`--benchmark`, cftool.data.benchmarks).
MTIL_TINY = "mtil-tiny"
BASE2NEW_TINY = "base2new-tiny"
MTIL = "mtil"
MTIL_ORDER2 = "mtil-order2"
BASE2NEW = "base2new"
BENCHMARKS = (MTIL_TINY, BASE2NEW_TINY, MTIL, MTIL_ORDER2, BASE2NEW)
# The embedded toy world's tasks (`--data toy:NAME`, cftool.data.toytasks), one per MTIL domain and in MTIL's order,
# and its test-only probe of the colour-shape combinations pretraining never shows.
TOY_AIRCRAFT = "aircraft"
TOY_CALTECH101 = "caltech101"
TOY_CIFAR100 = "cifar100"
TOY_DTD = "dtd"
TOY_EUROSAT = "eurosat"
TOY_FLOWERS = "flowers"
TOY_FOOD = "food"
TOY_MNIST = "mnist"
TOY_OXFORDPET = "oxfordpet"
TOY_CARS = "cars"
TOY_SUN397 = "sun397"
TOY_TASK_NAMES = (
    TOY_AIRCRAFT,
    TOY_CALTECH101,
    TOY_CIFAR100,
    TOY_DTD,
    TOY_EUROSAT,
    TOY_FLOWERS,
    TOY_FOOD,
    TOY_MNIST,
    TOY_OXFORDPET,
    TOY_CARS,
    TOY_SUN397,
)
TOY_HELDOUT = "heldout-combos"
# Training images' transform: none (the eval preprocessing), or the training transforms of CoOp and ZSCL.
NO_AUGMENT = "none"
COOP_AUGMENT = "coop"
ZSCL_AUGMENT = "zscl"
AUGMENTATIONS = (NO_AUGMENT, COOP_AUGMENT, ZSCL_AUGMENT)
# The reference protocol's augmentation for each --data prefix (coop:NAME, mtil:NAME), and other data's.
PROTOCOL_AUGMENTATION = {COOP_DATA: COOP_AUGMENT, MTIL_DATA: ZSCL_AUGMENT}
AUGMENTATION = NO_AUGMENT

# Fine-tuning methods (cftool.kinds) ---------------------------------------------------------------------------------

SGD = "sgd"
ADAMW = "adamw"
OPTIMIZERS = (SGD, ADAMW)  # each method's own is its MethodDefaults'


@dataclass(frozen=True)
class MethodDefaults:
    """A fine-tuning method (`finetune --method NAME`): how it trains unless told otherwise, and the options of its
    own (given to another method, they are refused, not ignored)."""

    name: str
    optimizer: str
    lr: float
    options: tuple[str, ...] = ()


COOP = MethodDefaults("coop", SGD, 2e-3, ("n_ctx", "ctx_init"))
HEAD = MethodDefaults("head", ADAMW, 1e-3)
LORA = MethodDefaults("lora", ADAMW, 1e-3, ("rank", "alpha", "towers", "lora_targets", "lora_init", "train_templates"))
FULL = MethodDefaults("full", ADAMW, 1e-5, ("towers", "train_templates"))
FINETUNE_METHODS = {method.name: method for method in (COOP, HEAD, LORA, FULL)}
FINETUNE_METHOD = COOP.name
COOP_INIT = "a photo of a"  # CoOp's hand-written context; its words give the number of context vectors
RANDOM_INIT = "random"
IMAGE_TOWER = "image"
TEXT_TOWER = "text"
TOWERS = (IMAGE_TOWER, TEXT_TOWER)
# Which of a task's templates the training loss's class text features of a tower method come from (evaluation
# averages all): ZSCL's MTIL training encodes one prompt per class, the first template.
ALL_TEMPLATES = "all"
FIRST_TEMPLATE = "first"
TRAIN_TEMPLATES = (ALL_TEMPLATES, FIRST_TEMPLATE)
PROTOCOL_TRAIN_TEMPLATES = {MTIL_DATA: FIRST_TEMPLATE}  # by --data prefix, and other data's
TRAIN_TEMPLATE = ALL_TEMPLATES
LORA_RANK = 8
LORA_ALPHA = 16.0
# Which weights LoRA adapts (cftool.kinds.lora.TARGET_GROUPS): the attention and MLP weights, or the MLP's alone.
LORA_ATTENTION_MLP = "attention+mlp"
LORA_MLP = "mlp"
LORA_TARGET_GROUPS = (LORA_ATTENTION_MLP, LORA_MLP)
LORA_TARGETS = LORA_ATTENTION_MLP
# How LoRA's factors start (cftool.kinds.lora): B zero and A Kaiming-uniform, the LoRA paper's; or both drawn from
# N(0, 0.01²), ConDU-LoRA's.
LORA_ZERO_B_INIT = "zero-b"
LORA_CONDU_INIT = "condu"
LORA_INITS = (LORA_ZERO_B_INIT, LORA_CONDU_INIT)
LORA_INIT = LORA_ZERO_B_INIT

# Training (cftool.train) --------------------------------------------------------------------------------------------

AUTO_PRECISION = "auto"  # bf16 autocast on a GPU, fp32 on the CPU
FP32 = "fp32"
BF16 = "bf16"
FP16 = "fp16"
PRECISIONS = (AUTO_PRECISION, FP32, BF16, FP16)
PRECISION = AUTO_PRECISION
# cosine-step: one cosine over the optimiser steps (after --warmup linear steps); cosine-epoch: Dassl's, the lr changes
# once per epoch (after --warmup-epochs epochs at the constant --warmup-lr).
COSINE_STEP = "cosine-step"
COSINE_EPOCH = "cosine-epoch"
SCHEDULES = (COSINE_STEP, COSINE_EPOCH)
SCHEDULE = COSINE_STEP
# Which epoch's parameters a run writes: the last's, or those of the best validation accuracy.
SELECT_LAST = "last"
SELECT_BEST_VAL = "best-val"
SELECTIONS = (SELECT_LAST, SELECT_BEST_VAL)
SELECTION = SELECT_LAST
TRAIN_BATCH_SIZE = 32
WEIGHT_DECAY = 0.0
WARMUP_STEPS = 0
WARMUP_EPOCHS = 0
WARMUP_LR = 1e-5
LABEL_SMOOTHING = 0.0
DROP_LAST = False

# MergeTune (cftool.train.objectives) --------------------------------------------------------------------------------

LAMBDA_LMC = 1.0
LAMBDA_ZS = 10.0
ZS_PARAM = "param"
ZS_FEATURE = "feature"
ZS_REGULARISERS = (ZS_PARAM, ZS_FEATURE)
ZS_REGULARISER = ZS_FEATURE
# How the feature surrogate compares class text features: KgCoOp's LOSS_TYPE (MergeTune's
# trainers/kgcoop_coop_LMC.py:385-393; train.py:106 defaults to cosine, and the README's CoOp run passes cosine).
ZS_COSINE = "cosine"
ZS_L2 = "l2"
ZS_LOSSES = (ZS_COSINE, ZS_L2)
ZS_LOSS = ZS_COSINE
# The reference's NUM_SAMPLES (train.py:108, scripts/coop_LMC/base2new_train_coop.sh: 5): the path's α grid.
REFERENCE_LMC_COUNT = 5

# Merging (cftool.merge) ---------------------------------------------------------------------------------------------

GLOBAL_TRIM = "global"
PER_TENSOR_TRIM = "per-tensor"
TRIMS = (GLOBAL_TRIM, PER_TENSOR_TRIM)


@dataclass(frozen=True)
class MergeMethodDefaults:
    """A merge method (`unify --method NAME`) and its options with their defaults (the fields of its options class,
    cftool.merge.methods); given to another method, they are refused."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


CONDU = MergeMethodDefaults("condu")
CONDU_LORA = MergeMethodDefaults("condu-lora")
TIES = MergeMethodDefaults("ties", {"keep": 0.2, "trim": GLOBAL_TRIM, "scale": 1.0})
TASK_ARITHMETIC = MergeMethodDefaults("task-arithmetic", {"scale": 0.3})
DARE = MergeMethodDefaults("dare", {"p": 0.5, "seed": SEED, "scale": 0.3})
DARE_TIES = MergeMethodDefaults("dare-ties", {"p": DARE.options["p"], "seed": SEED, "scale": TIES.options["scale"]})
MEAN = MergeMethodDefaults("mean")
MERGE_METHODS = {method.name: method for method in (CONDU, CONDU_LORA, TIES, TASK_ARITHMETIC, DARE, DARE_TIES, MEAN)}
MERGE_METHOD = CONDU.name


@dataclass(frozen=True)
class MergeOption:
    """A merge method's option as `unify` declares it: its flag, what it is, and its choices where it has some."""

    flag: str
    help: str
    choices: tuple[str, ...] = ()


# The flag of every option of a merge method: `unify` declares one for each, in this order, and messages name it.
MERGE_OPTION_FLAGS = {
    "keep": MergeOption("--keep", "the fraction of entries kept."),
    "trim": MergeOption(
        "--trim", "where the kept fraction is counted: over the whole delta (the paper's) or in each tensor.", TRIMS
    ),
    "scale": MergeOption("--lambda", "the merged delta's scale."),
    "p": MergeOption("--p", "the drop rate."),
    "seed": MergeOption("--seed", "the seed of the drops."),
}

# Evaluation and routing (cftool.eval, cftool.encode) ---------------------------------------------------------------

EVAL_BATCH_SIZE = 256
PATH_STEPS = 11  # points of a linear path, α = 0, 0.1, …, 1
TOP_K = 4  # experts per routed image, the reference's K
# "own": each task's images are classified among its own classes (ConDU's evaluation); "union": among every task's
# classes of the table, as some task-agnostic tables of other methods do.
OWN_LABEL_SPACE = "own"
UNION_LABEL_SPACE = "union"
LABEL_SPACES = (OWN_LABEL_SPACE, UNION_LABEL_SPACE)
LABEL_SPACE = OWN_LABEL_SPACE
