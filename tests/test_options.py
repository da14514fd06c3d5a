"""cftool.options names every choice once: each registry of the library implements exactly the names it declares,
in its order, and the options a merge method takes are the fields of its options."""

import dataclasses

import pytest

from cftool import options


def test_each_finetune_method_is_implemented_and_takes_its_listed_options():
    import inspect

    from cftool.kinds.apply import METHODS

    assert tuple(METHODS) == tuple(options.FINETUNE_METHODS)
    for name, method in METHODS.items():
        parameters = inspect.signature(method.__init__).parameters
        assert set(options.FINETUNE_METHODS[name].options) <= set(parameters), name


def test_each_merge_method_is_registered_with_the_options_listed_for_it():
    from cftool.merge.methods import METHODS

    assert tuple(METHODS) == tuple(options.MERGE_METHODS)
    for name, method in METHODS.items():
        fields = {field.name: field.default for field in dataclasses.fields(method.options)}
        assert fields == options.MERGE_METHODS[name].options, name
    declared = {field for method in options.MERGE_METHODS.values() for field in method.options}
    assert set(options.MERGE_OPTION_FLAGS) == declared


def test_each_benchmark_is_defined():
    from cftool.data.benchmarks import BENCHMARKS

    assert tuple(BENCHMARKS) == options.BENCHMARKS


def test_each_toy_task_is_defined():
    from cftool.data.toy import TOY_SOURCES

    assert tuple(TOY_SOURCES) == (*options.TOY_TASK_NAMES, options.TOY_HELDOUT)


def test_each_lora_target_group_and_tower_names_its_weights():
    from cftool.kinds.lora import TARGET_GROUPS, TOWER_PREFIXES

    assert tuple(TARGET_GROUPS) == options.LORA_TARGET_GROUPS
    assert tuple(TOWER_PREFIXES) == options.TOWERS


def test_each_augmentation_but_none_has_its_crop():
    from cftool.data.augment import CROP_SCALES

    assert (options.NO_AUGMENT, *CROP_SCALES) == options.AUGMENTATIONS


# Each default (or protocol's default, or method's own) with the choices it is one of.
DEFAULTS = {
    "DEVICE": (options.DEVICE, options.DEVICES),
    "CLASS_SUBSET": (options.CLASS_SUBSET, options.CLASS_SUBSETS),
    "EVAL_SPLIT": (options.EVAL_SPLIT, options.SPLITS),
    "VAL_IMAGE_SET": (options.VAL_IMAGE_SET, options.VAL_IMAGES),
    "AUGMENTATION": (options.AUGMENTATION, options.AUGMENTATIONS),
    **{
        f"PROTOCOL_AUGMENTATION[{prefix}]": (augmentation, options.AUGMENTATIONS)
        for prefix, augmentation in options.PROTOCOL_AUGMENTATION.items()
    },
    "FINETUNE_METHOD": (options.FINETUNE_METHOD, tuple(options.FINETUNE_METHODS)),
    **{
        f"{method.name}.optimizer": (method.optimizer, options.OPTIMIZERS)
        for method in options.FINETUNE_METHODS.values()
    },
    "TRAIN_TEMPLATE": (options.TRAIN_TEMPLATE, options.TRAIN_TEMPLATES),
    **{
        f"PROTOCOL_TRAIN_TEMPLATES[{prefix}]": (templates, options.TRAIN_TEMPLATES)
        for prefix, templates in options.PROTOCOL_TRAIN_TEMPLATES.items()
    },
    "LORA_TARGETS": (options.LORA_TARGETS, options.LORA_TARGET_GROUPS),
    "LORA_INIT": (options.LORA_INIT, options.LORA_INITS),
    "PRECISION": (options.PRECISION, options.PRECISIONS),
    "SCHEDULE": (options.SCHEDULE, options.SCHEDULES),
    "SELECTION": (options.SELECTION, options.SELECTIONS),
    "ZS_REGULARISER": (options.ZS_REGULARISER, options.ZS_REGULARISERS),
    "ZS_LOSS": (options.ZS_LOSS, options.ZS_LOSSES),
    "MERGE_METHOD": (options.MERGE_METHOD, tuple(options.MERGE_METHODS)),
    "ties trim": (options.TIES.options["trim"], options.TRIMS),
    "LABEL_SPACE": (options.LABEL_SPACE, options.LABEL_SPACES),
}


@pytest.mark.parametrize("name", DEFAULTS)
def test_each_default_is_one_of_its_choices(name):
    default, choices = DEFAULTS[name]
    assert default in choices


def test_each_set_of_choices_names_each_value_once():
    choice_sets = {
        name: value
        for name, value in vars(options).items()
        if name.isupper() and isinstance(value, tuple) and all(isinstance(item, str) for item in value)
    }
    assert {"CLASS_SUBSETS", "OPTIMIZERS", "TRIMS", "TOY_TASK_NAMES"} <= set(choice_sets)
    for name, choices in choice_sets.items():
        assert len(set(choices)) == len(choices), name


def test_the_module_imports_nothing_of_cftool_or_beyond_the_standard_library():
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse(Path(options.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__", *sys.stdlib_module_names}


def test_unify_declares_a_flag_for_each_merge_option_from_its_entry_alone():
    import typer.main

    from cftool.cli import app

    unify = typer.main.get_command(app).commands["unify"]
    params = {param.name: param for param in unify.params}
    names = [param.name for param in unify.params]
    assert names.index("replace") + 1 == names.index(next(iter(options.MERGE_OPTION_FLAGS)))  # after --replace
    for field, option in options.MERGE_OPTION_FLAGS.items():
        param = params[field]
        methods = [name for name, method in options.MERGE_METHODS.items() if field in method.options]
        assert param.opts == [option.flag] and param.default is None, field  # None: the method's own default
        assert param.help.startswith(", ".join(methods) + ": ") and option.help in param.help, field
        assert all(f"{method} " in param.show_default for method in methods), field
    assert list(params["trim"].type_descriptor.choices) == list(options.TRIMS)
