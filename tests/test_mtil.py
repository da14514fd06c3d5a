"""MTIL's protocol (docs/design.md §5.4): Transfer / Average / Last, and `eval --sessions` over continual sessions of
unified sets, models and deltas, with cached cells and the ConDU reference code's sessions."""

import json

import pytest
import torch
from conftest import one_line_error, stand_in_finetune

from cftool.data import load_task
from cftool.io.checkpoint import save_checkpoint
from cftool.metrics import mtil_metrics
from cftool.zoo.base_weights import open_base

TASKS = ("food", "mnist", "cars")


def test_transfer_average_last_of_a_hand_written_matrix():
    matrix = [
        [80.0, 30.0, 20.0],
        [70.0, 90.0, 25.0],
        [60.0, 85.0, 95.0],
    ]
    metrics = mtil_metrics(matrix)
    assert metrics["transfer"] == [None, 30.0, 22.5]  # the sessions before each task was learned
    assert metrics["average"] == [70.0, 205 / 3, 140 / 3]
    assert metrics["last"] == [60.0, 85.0, 95.0]
    assert metrics["transfer_mean"] == pytest.approx(26.25)  # over tasks 2…T
    assert metrics["average_mean"] == pytest.approx((70 + 205 / 3 + 140 / 3) / 3)
    assert metrics["last_mean"] == pytest.approx(80.0)


def test_fewer_sessions_than_tasks_and_bad_matrices():
    partial = mtil_metrics([[50.0, 10.0, 20.0], [40.0, 60.0, 30.0]])
    assert partial["transfer"] == [None, 10.0, 25.0] and partial["last"] == [40.0, 60.0, 30.0]
    for bad in ([], [[1.0, 2.0], [3.0]], [[1.0], [2.0]]):
        with pytest.raises(ValueError, match="one row per session"):
            mtil_metrics(bad)


@pytest.fixture(scope="module")
def sessions(toy_folders, tmp_path_factory):
    """Three sessions over the folder tasks, as a user makes them: ConDU (`unify`, then `unify --into`), sequential
    models (each its own `model` file, made from the previous one), and deltas."""
    from cftool.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sessions")
    with open_base("tiny") as weights:
        state = {name: weights[name] for name in weights}
        previous = weights.header("model").base_sha256
        for t, name in enumerate(TASKS, start=1):
            task = load_task(f"folder:{toy_folders[name]}")
            header = weights.header("model", task=name, classnames=task.classnames, template="a photo of a {}.")
            model = save_checkpoint(out / f"{name}.safetensors", stand_in_finetune(state, t), header)
            prototypes = torch.randn(len(task.classnames), 128, generator=torch.Generator().manual_seed(t))
            prototypes_header = weights.header("prototypes", task=name, classnames=task.classnames)
            save_checkpoint(out / f"{name}.prototypes.safetensors", {"prototypes": prototypes}, prototypes_header)
            delta = out / f"delta{t}.safetensors"
            assert main(["delta", str(model), "--zs", "tiny", "-o", str(delta)]) == 0
            into = [] if t == 1 else ["--into", str(out / f"condu{t - 1}.st")]
            assert main(["unify", *into, str(delta), "-o", str(out / f"condu{t}.st")]) == 0
            # A sequential session's model records the previous session's model as its base.
            sequential = {**header.__dict__, "base_sha256": previous, "base": f"RN50-tiny:seq{t - 1}"}
            save_checkpoint(out / f"seq{t}.safetensors", stand_in_finetune(state, 10 + t), type(header)(**sequential))
            previous = "f" * 64
    return out


def mtil(cli, toy_folders, *args):
    data = [arg for name in TASKS for arg in ("--data", f"folder:{toy_folders[name]}")]
    result = cli("eval", *data, "--zs", "tiny", "--json", *args)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout), result


def plain_eval(cli, toy_folders, checkpoint) -> list[float]:
    """A checkpoint's accuracy on each task by plain `eval` (a column, not a session)."""
    report, _ = mtil(cli, toy_folders, str(checkpoint))
    return [row["accuracy"] for row in report["models"][0]["results"]]


def test_the_matrix_of_unified_sessions_uses_experts_then_routing(cli, toy_folders, sessions, tmp_path):
    prototypes = str(sessions / "*.prototypes.safetensors")
    report, _ = mtil(
        cli,
        toy_folders,
        "zs",
        "--sessions",
        f"ConDU={sessions}/condu{{t}}.st",
        "--prototypes",
        prototypes,
        "--cache-dir",
        tmp_path / "cells",
    )
    (condu,) = report["methods"]
    assert condu["method"] == "ConDU" and report["tasks"] == list(TASKS) and report["mode"] == "task-id"
    matrix = condu["matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    zero_shot = report["columns"][0]["accuracy"]
    # Each learned cell is its decoupled expert's accuracy, as `decouple --as model` + `eval` measure it.
    for t in (1, 3):
        for j, name in enumerate(TASKS[:t]):
            expert = tmp_path / f"expert-{t}-{name}.safetensors"
            made = cli(
                "decouple", sessions / f"condu{t}.st", "--task", name, "--as", "model", "--zs", "tiny", "-o", expert
            )
            assert made.code == 0, made.stderr
            assert matrix[t - 1][j] == pytest.approx(plain_eval(cli, toy_folders, expert)[j], abs=1e-6)
    assert condu["last"] == matrix[2] and condu["transfer"][0] is None
    assert condu["transfer"][2] == pytest.approx((matrix[0][2] + matrix[1][2]) / 2)
    assert report["cells"] == {"measured": 3 + 9, "cached": 0}
    agnostic, _ = mtil(
        cli,
        toy_folders,
        "--sessions",
        f"{sessions}/condu{{t}}.st",
        "--prototypes",
        prototypes,
        "--task-agnostic",
        "--cache-dir",
        tmp_path / "cells",
    )
    (routed,) = agnostic["methods"]
    assert agnostic["mode"] == "task-agnostic"
    # Tasks not yet learned are routed in both modes: the same cells, read from the cache.
    assert routed["matrix"][0][1:] == matrix[0][1:] and routed["matrix"][1][2] == matrix[1][2]
    assert agnostic["cells"] == {"measured": 6, "cached": 3}
    assert all(0 <= value <= 100 for value in zero_shot)


def test_rerunning_after_a_new_session_measures_only_its_cells(cli, toy_folders, sessions, tmp_path):
    cells = tmp_path / "cells"
    two = ",".join(str(sessions / f"delta{t}.safetensors") for t in (1, 2))
    first, _ = mtil(cli, toy_folders, "--sessions", f"deltas={two}", "--cache-dir", cells)
    assert first["cells"] == {"measured": 6, "cached": 0}
    again, _ = mtil(
        cli, toy_folders, "--sessions", f"deltas={two},{sessions / 'delta3.safetensors'}", "--cache-dir", cells
    )
    assert again["cells"] == {"measured": 3, "cached": 6}
    assert again["methods"][0]["matrix"][:2] == first["methods"][0]["matrix"]


def test_sequential_models_of_a_chain_of_bases_are_evaluated_over_the_original(cli, toy_folders, sessions, tmp_path):
    report, _ = mtil(
        cli,
        toy_folders,
        "--sessions",
        f"sequential={sessions}/seq{{t}}.safetensors",
        "--cache-dir",
        tmp_path / "cells",
        "--heatmap",
        tmp_path / "m.png",
    )
    matrix = report["methods"][0]["matrix"]
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matrix[2] == pytest.approx(plain_eval(cli, toy_folders, sessions / "seq3.safetensors"), abs=1e-6)
    assert matrix[0] != matrix[2]


def test_bad_session_inputs_are_one_line_errors(cli, toy_folders, sessions, tmp_path):
    data = [arg for name in TASKS for arg in ("--data", f"folder:{toy_folders[name]}")]
    gap = tmp_path / "gap"
    gap.mkdir()
    for t in (1, 3):
        (gap / f"s{t}.st").write_bytes((sessions / f"condu{t}.st").read_bytes())
    assert "session 2" in one_line_error(cli("eval", *data, "--zs", "tiny", "--sessions", f"{gap}/s{{t}}.st"))
    assert "no session file" in one_line_error(cli("eval", *data, "--zs", "tiny", "--sessions", f"{gap}/x{{t}}.st"))
    four = ",".join(str(sessions / f"delta{t}.safetensors") for t in (1, 2, 3, 3))
    assert "4 sessions for 3 tasks" in one_line_error(cli("eval", *data, "--zs", "tiny", "--sessions", four))
    message = one_line_error(
        cli("eval", *data, "--zs", "tiny", "--sessions", f"{sessions}/condu{{t}}.st", "--cache-dir", tmp_path / "c")
    )
    assert "--prototypes" in message  # unlearned tasks are routed, which needs prototypes
    assert "--sessions" in one_line_error(cli("eval", *data, "--zs", "tiny", "--task-agnostic"))
    assert "--benchmark" in one_line_error(
        cli("eval", "--benchmark", "base2new-tiny", "--zs", "tiny", "--sessions", f"{sessions}/condu{{t}}.st")
    )


def test_sessions_trained_in_another_order_than_the_tables_are_refused(cli, toy_folders, sessions, tmp_path):
    """Transfer reads session t as having learned the first t tasks: a unified set, a merged delta or a fine-tune
    of another order is refused by what it records, before anything is measured."""
    mean = tmp_path / "mean12.safetensors"
    assert (
        cli(
            "unify", "--method", "mean", sessions / "delta1.safetensors", sessions / "delta2.safetensors", "-o", mean
        ).code
        == 0
    )
    backwards = [arg for name in reversed(TASKS) for arg in ("--data", f"folder:{toy_folders[name]}")]
    for spec, session, learned, expected in (
        (f"{sessions}/condu{{t}}.st", sessions / "condu1.st", "has learned food", "cars"),
        (f"{sessions}/seq{{t}}.safetensors", sessions / "seq1.safetensors", "was trained on food", "cars"),
        (f"{sessions}/delta3.safetensors,{mean}", mean, "has learned food, mnist", "cars, mnist"),
    ):
        message = one_line_error(cli("eval", *backwards, "--zs", "tiny", "--sessions", spec))
        session_number = 2 if session == mean else 1
        assert (
            f"session {session_number} ({session}) {learned}, but session {session_number} of this table "
            f"learns {expected} (the table's tasks in order: cars, mnist, food)" in message
        )
    # The same files in the order they were trained make a table.
    report, _ = mtil(
        cli, toy_folders, "--sessions", f"{sessions}/delta1.safetensors,{mean}", "--cache-dir", tmp_path / "cells"
    )
    assert len(report["methods"][0]["matrix"]) == 2


def test_sessions_imported_from_the_condu_reference_code_are_evaluated_the_same_way(cli, toy_folders, tmp_path):
    """ConDU's code leaves one folder per session (unified.pth, {task}.pth, prototypes.pth); imported, the sessions
    fill the matrix as cftool's own do."""
    with open_base("tiny") as weights:
        floating = {n: weights[n] for n in weights if weights[n].is_floating_point()}
    generator = torch.Generator().manual_seed(3)
    names = [load_task(f"folder:{toy_folders[name]}").classnames for name in TASKS]
    imported = []
    for t in (1, 2):
        folder = tmp_path / f"session_{t}"
        folder.mkdir()
        torch.save(
            {n: torch.randn(x.shape, generator=generator) * 1e-3 for n, x in floating.items()}, folder / "unified.pth"
        )
        for i, task in enumerate(TASKS[:t]):
            masks = {n: torch.rand(x.shape, generator=generator) > 0.5 for n, x in floating.items()}
            torch.save({"masks": masks, "rescalers": torch.tensor(1.0 + i)}, folder / f"{task}.pth")
        torch.save(
            {task: list(torch.randn(len(names[i]), 128, generator=generator)) for i, task in enumerate(TASKS[:t])},
            folder / "prototypes.pth",
        )
        out = tmp_path / f"imported{t}" / "session.st"
        out.parent.mkdir()
        result = cli("import", folder, "--zs", "tiny", "-o", out)
        assert result.code == 0, result.stderr
        imported.append(out)
    protos = str(tmp_path / "imported2" / "*.prototypes.safetensors")
    report, _ = mtil(
        cli,
        toy_folders,
        "--sessions",
        ",".join(map(str, imported)),
        "--prototypes",
        protos,
        "--cache-dir",
        tmp_path / "cells",
    )
    matrix = report["methods"][0]["matrix"]
    assert len(matrix) == 2 and all(0 <= value <= 100 for row in matrix for value in row)


def test_the_union_label_space_classifies_among_every_tasks_classes(cli, toy_folders, sessions, tmp_path):
    from cftool.encode.zero_shot import encode_images, zero_shot_head
    from cftool.zoo import load_model

    prototypes = str(sessions / "*.prototypes.safetensors")
    common = (
        "zs",
        "--sessions",
        f"{sessions}/condu{{t}}.st",
        "--prototypes",
        prototypes,
        "--task-agnostic",
        "--cache-dir",
        tmp_path / "cells",
    )
    own, _ = mtil(cli, toy_folders, *common)
    union, result = mtil(cli, toy_folders, *common, "--label-space", "union")
    assert union["label_space"] == "union" and own["label_space"] == "own"
    data = [arg for name in TASKS for arg in ("--data", f"folder:{toy_folders[name]}")]
    table = cli("eval", *data, "--zs", "tiny", *common, "--label-space", "union")  # the cells are cached
    assert "among every task's classes" in table.stdout and "among every task's classes" not in table.stderr
    assert union["cells"] == {"measured": 3 + 9, "cached": 0}  # its cells are its own, never the own space's
    # The zero-shot row by hand: every task's zero-shot head side by side, each image right only on its own column.
    zoo = load_model("tiny")
    tasks = [load_task(f"folder:{toy_folders[name]}") for name in TASKS]
    head = torch.cat([zero_shot_head(zoo, task.classnames, task.templates) for task in tasks], dim=1)
    offset = 0
    for task, accuracy in zip(tasks, union["columns"][0]["accuracy"], strict=True):
        features, labels = encode_images(zoo, task.split("test", zoo.preprocess), 64, 0)
        assert accuracy == pytest.approx(100 * ((features @ head).argmax(1) == labels + offset).float().mean().item())
        offset += len(task.classnames)
    # More classes can only add mistakes: a cell right among every class is right among its own.
    assert all(u <= o for u, o in zip(union["columns"][0]["accuracy"], own["columns"][0]["accuracy"], strict=True))
    for union_row, own_row in zip(union["methods"][0]["matrix"], own["methods"][0]["matrix"], strict=True):
        assert all(u <= o for u, o in zip(union_row, own_row, strict=True))
    assert union["methods"][0]["matrix"] != own["methods"][0]["matrix"]
    data = [arg for name in TASKS for arg in ("--data", f"folder:{toy_folders[name]}")]
    assert "add --task-agnostic" in one_line_error(
        cli("eval", *data, "--zs", "tiny", "--sessions", f"{sessions}/condu{{t}}.st", "--label-space", "union")
    )
    assert "--label-space applies to the MTIL matrix" in one_line_error(
        cli("eval", *data, "--zs", "tiny", "--label-space", "union")
    )
