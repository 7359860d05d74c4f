"""``mair train``'s flags come from one table: argparse, the options, the torchrun workers' command line and the
experiment fields they override all follow it."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path

import pytest

from mair.experiments import load
from mair.train.options import FLAGS, TrainOptions, child_argv, options_from_args, overridden


def _parse(*argv: str) -> argparse.Namespace:
    from mair.cli import build_parser

    return build_parser().parse_args(["train", "sr_light_t_x2", *argv])


def test_every_flag_is_one_field_of_the_options_with_the_same_default() -> None:
    fields = {f.name: f for f in dataclasses.fields(TrainOptions)}
    assert {f.field for f in FLAGS} == set(fields) - {"experiment"}
    assert len({f.field for f in FLAGS}) == len({f.name for f in FLAGS}) == len(FLAGS)
    for flag in FLAGS:
        assert flag.kind in ("value", "switch", "toggle"), flag.name
        default = fields[flag.field].default
        assert (False if flag.kind == "switch" else flag.default) == default, flag.name
    assert options_from_args(_parse()) == TrainOptions("sr_light_t_x2")


def test_the_parser_knows_every_flag_and_nothing_else() -> None:
    from mair.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    strings = {s for a in train._actions for s in a.option_strings} - {"-h", "--help"}
    expected = {f.name for f in FLAGS} | {"--no-" + f.name[2:] for f in FLAGS if f.kind == "toggle"}
    assert strings == expected


def test_the_workers_repeat_every_given_flag() -> None:
    argv = shlex.split(
        "--scope demo --gpus 2 --device cpu --max-iters 7 --precision bf16 --compile --run-dir r --no-resume "
        "--init-fix-t-x3 --init-weights w.pth --checkpoint-every 3 --keep 2 --num-workers 1 --allow-batch-mismatch "
        "--data-dir d --results-dir res --no-val --no-mlflow --tracking-uri file:m --log-every 4 --no-compile --exact"
    )
    args = _parse(*argv)
    opts = options_from_args(args)
    assert opts == TrainOptions(
        "sr_light_t_x2",
        scope="demo",
        gpus=2,
        device="cpu",
        max_iters=7,
        precision="bf16",
        compile="inductor",
        run_dir=Path("r"),
        resume=False,
        init_fix_t_x3=True,
        init_weights=Path("w.pth"),
        checkpoint_every=3,
        keep=2,
        num_workers=1,
        allow_batch_mismatch=True,
        data_dir=Path("d"),
        results_dir=Path("res"),
        validate=False,
        mlflow=False,
        tracking_uri="file:m",
        log_every=4,
        no_compile=True,
        exact=True,
    )
    worker = child_argv(args)
    assert worker[:2] == ["train", "sr_light_t_x2"]
    from mair.cli import build_parser

    assert options_from_args(build_parser().parse_args(worker)) == opts  # the workers see the same options
    defaults = child_argv(_parse())
    assert defaults == [
        "train",
        "sr_light_t_x2",
        "--scope",
        "paper",
        "--keep",
        "3",
        "--results-dir",
        "results/trained",
        "--resume",
        "--val",
        "--mlflow",
    ]


def test_overriding_flags_name_experiment_fields_and_replace_them() -> None:
    exp = load("dn_real", "demo")
    for flag in FLAGS:
        if flag.overrides:
            node = exp
            for part in flag.overrides.split("."):
                assert part in {f.name for f in dataclasses.fields(node)}, flag.overrides
                node = getattr(node, part)
    assert overridden(exp, TrainOptions("dn_real")) == exp
    changed = overridden(exp, TrainOptions("dn_real", checkpoint_every=3, log_every=2))
    assert (changed.train.checkpoint_freq, changed.train.print_freq) == (3, 2)
    assert dataclasses.replace(changed, train=exp.train) == exp  # nothing else changes
    assert overridden(exp, TrainOptions("dn_real", log_every=0)).train.print_freq == exp.train.print_freq


@pytest.mark.parametrize("bad", [["--precision", "fp16"], ["--keep", "x"], ["--scope", "tiny"]])
def test_bad_values_are_refused_by_the_parser(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parse(*bad)
    assert info.value.code == 2 and bad[0] in capsys.readouterr().err
