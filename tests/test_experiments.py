"""Experiment files: all 17 load and validate, hold the official values, and every key is a field of the typed
experiment; bad files fail with clear errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from mair import experiments as ex
from mair.experiments import (
    PAPER_ORDER,
    Experiment,
    ExperimentError,
    experiment_ids,
    load,
    params_dir,
)
from mair.experiments.spec import InitFrom, Loss, Mixup, Scheduler

REPO = Path(__file__).resolve().parents[1]
EXPECTED_IDS = [
    "sr_classic_x2",
    "sr_classic_x3",
    "sr_classic_x4",
    "sr_light_s_x2",
    "sr_light_s_x3",
    "sr_light_s_x4",
    "sr_light_t_x2",
    "sr_light_t_x3",
    "sr_light_t_x4",
    "dn_color_s15",
    "dn_color_s25",
    "dn_color_s50",
    "dn_real",
    "deblur_motion",
    "dehaze_its",
    "dehaze_ots",
    "dehaze_r6k",
]


def _raw(exp_id: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "params" / "experiments" / f"{exp_id}.yaml").read_text())


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _error(path: Path) -> str:
    with pytest.raises(ExperimentError) as info:
        load(path)
    return str(info.value)


# ------------------------------------------------------------------------------------------ all files


def test_ids_are_the_paper_experiments_in_paper_order() -> None:
    assert experiment_ids() == EXPECTED_IDS == list(PAPER_ORDER)
    assert params_dir() == REPO / "params"


@pytest.mark.parametrize("exp_id", EXPECTED_IDS)
def test_every_experiment_loads_and_its_id_is_its_file_name(exp_id: str) -> None:
    exp = load(exp_id)
    assert isinstance(exp, Experiment)
    assert exp.id == exp_id == Path(params_dir(), "experiments", f"{exp_id}.yaml").stem
    assert exp.scope == "paper"
    assert load(REPO / "params" / "experiments" / f"{exp_id}.yaml") == exp
    assert exp.train.effective_batch == exp.train.batch_per_gpu * exp.train.gpus
    assert exp.paper_gpus == exp.train.gpus


def _leaves(node: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every key path of a YAML document that ends in a value (list items indexed)."""
    if isinstance(node, dict) and node:
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(node, list) and node:
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, (*path, i))]
    return [path]


@pytest.mark.parametrize("exp_id", EXPECTED_IDS)
def test_every_key_of_the_file_is_a_field_of_the_typed_experiment(exp_id: str) -> None:
    """No key of an experiment file travels untyped: each one (network kwargs aside, which are the constructor's
    arguments) is a dataclass field holding the file's value, and the object gives back the file exactly."""
    raw = _raw(exp_id)
    exp = load(exp_id)
    for path in _leaves(raw):
        node: Any = exp
        for i, key in enumerate(path):
            if isinstance(key, int):
                assert isinstance(node, tuple), path
                node = node[key]
            elif path[i - 1 : i] in (("kwargs",), ("network_kwargs",)):
                node = node[key]  # constructor arguments: a read-only mapping, closed by the schema
            else:
                assert dataclasses.is_dataclass(node), (path, key)
                assert key in {f.name for f in dataclasses.fields(node)}, (path, key)
                node = getattr(node, key)
        expected = raw
        for key in path:
            expected = expected[key]
        assert node == (tuple(expected) if isinstance(expected, list) else expected), path
    assert json.dumps(exp.to_dict()) == json.dumps(raw)  # same keys, same order, same values
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.train.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        exp.network.kwargs["embed_dim"] = 1  # type: ignore[index]
    assert pickle.loads(pickle.dumps(exp)) == exp == copy.deepcopy(exp)  # e.g. into data loader workers


def _dataclasses_in(annotation: Any) -> list[type]:
    if dataclasses.is_dataclass(annotation):
        return [annotation]
    return [d for arg in typing.get_args(annotation) for d in _dataclasses_in(arg)]


def test_every_field_of_the_typed_experiment_is_in_some_file() -> None:
    """The other direction: no dataclass field that no file fills (the optional fields of the scheduler, loss
    and test datasets are filled by the variants that have them)."""
    seen = {tuple(k for k in path if not isinstance(k, int)) for i in EXPECTED_IDS for path in _leaves(_raw(i))}

    def walk(cls: type, path: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            here = (*path, f.name)
            assert any(s[: len(here)] == here for s in seen), here
            for sub in _dataclasses_in(hints[f.name]):
                walk(sub, here)

    walk(Experiment, ())


def test_schema_is_draft_2020_12_and_closed_everywhere() -> None:
    import jsonschema

    schema = json.loads((REPO / "params" / "schema" / "experiment.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)

    def walk(node: Any, where: str, in_if: bool) -> None:
        if isinstance(node, dict):
            # Dispatch nodes (scheduler, loss: only "type" here) are closed by the definitions their
            # if/then branches select; if/then branches only refine closed nodes.
            dispatch = "allOf" in node and set(node.get("properties", {})) == {"type"}
            if "properties" in node and not in_if and not dispatch:
                assert node.get("additionalProperties") is False, where
                assert set(node.get("required", [])) == set(node["properties"]), where
            for key, value in node.items():
                walk(value, f"{where}/{key}", in_if or key in ("if", "then"))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}", in_if)

    walk(schema, "#", False)


def test_dataset_ids_are_the_contract_ids() -> None:
    contracts = (REPO / "docs" / "contracts.md").read_text()
    table_ids = set(re.findall(r"^\| ([a-z0-9_, ]+) \|", contracts, flags=re.M))
    known = {i.strip() for row in table_ids for i in row.split(",")}
    for exp_id in EXPECTED_IDS:
        exp = load(exp_id)
        used = [d.id for d in (*exp.train.datasets, *exp.test.datasets, exp.val.dataset)]
        assert set(used) <= known, (exp_id, set(used) - known)


# ------------------------------------------------------------------------------------------ spec values


def test_classic_sr_x2_matches_the_official_yml() -> None:
    exp = load("sr_classic_x2")
    kw, train = exp.network.kwargs, exp.train
    assert exp.network.arch == "MaIR"
    assert (kw["embed_dim"], kw["depths"], kw["d_state"], kw["ssm_ratio"], kw["mlp_ratio"]) == (
        180,
        (6,) * 6,
        16,
        2.0,
        2.5,
    )
    assert exp.network.constructor_kwargs()["depths"] == [6] * 6
    assert (kw["upsampler"], kw["upscale"], kw["img_size"], kw["scan_len"]) == ("pixelshuffle", 2, 64, 8)
    assert kw["drop_path_rate"] == train.drop_path.rate == 0.1
    assert train.scheduler == Scheduler("MultiStepLR", milestones=(250000, 400000, 450000, 475000), gamma=0.5)
    assert (train.total_iter, train.batch_per_gpu, train.gpus, train.effective_batch) == (500000, 4, 8, 32)
    optimizer = train.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.betas, optimizer.eps, optimizer.weight_decay) == (
        "Adam",
        2e-4,
        (0.9, 0.99),
        1e-8,
        0.0,
    )
    assert (train.patch.gt_size, train.patch.lq_size) == (128, 64)
    assert train.datasets[0].id == "df2k" and train.seed == 10 and train.grad_clip is None
    assert exp.val.dataset.id == "set14" and exp.val.metrics.crop_border == 2
    assert [d.id for d in exp.test.datasets] == ["set5", "set14", "b100", "urban100", "manga109"]
    assert exp.test.self_ensemble_reported is True and exp.test.protocol == "tile"
    assert exp.complexity.params == 19444247 and exp.complexity.flops_g == 5956.8


def test_x3_and_x4_initialise_from_x2_without_strict_loading() -> None:
    for exp_id, parent in [
        ("sr_classic_x3", "sr_classic_x2"),
        ("sr_light_s_x4", "sr_light_s_x2"),
        ("sr_light_t_x4", "sr_light_t_x2"),
    ]:
        init = load(exp_id).train.init_from
        assert (init.experiment, init.strict, init.quirk) == (parent, False, None)
    assert load("sr_light_s_x3").train.total_iter == 500000
    assert load("sr_light_t_x3").train.total_iter == 250000


def test_tiny_x3_keeps_the_official_init_quirk_with_the_fix_recorded() -> None:
    init = load("sr_light_t_x3").train.init_from
    assert init.experiment == "sr_light_s_x2" and init.strict is False
    assert init.quirk.official == "sr_light_s_x2"
    assert init.quirk.fixed == "sr_light_t_x2"
    assert init.quirk.default == "official"
    assert (init.quirk.chosen(), init.quirk.chosen("official"), init.quirk.chosen("fixed")) == (
        "sr_light_s_x2",
        "sr_light_s_x2",
        "sr_light_t_x2",
    )


def test_colour_denoising_values() -> None:
    s15, s50 = load("dn_color_s15"), load("dn_color_s50")
    assert s15.train.total_iter == 3_200_000
    assert s15.train.scheduler.milestones == (1600000, 2100000, 2500000, 2800000, 3000000)
    assert s15.train.loss == Loss("charbonnier", weight=1.0, reduction="mean", eps=1e-12)
    assert (s15.train.batch_per_gpu, s15.train.effective_batch) == (1, 8)
    assert s15.network.kwargs["upsampler"] is None and s15.network.kwargs["ssm_ratio"] == 1.3
    assert s50.train.noise_sigma == 50 == s50.test.noise.sigma == s50.val.noise.sigma
    assert s50.train.init_from == InitFrom(
        experiment="dn_color_s15",
        strict=True,
        weights="MaIR_CDN_s15.pth",
        quirk=None,
    )
    assert s50.train.total_iter == 1_600_000
    metrics = s15.test.metrics
    # RGB is the primary space, Y is reported too (docs/experiments.md "Quirks", 8.18).
    assert metrics.test_y_channel is False and metrics.extra_spaces == ("y",)
    assert [d.id for d in s15.test.datasets] == ["mcmaster", "kodak24", "cbsd68", "urban100"]
    assert s15.complexity.flops_mflops_per_pixel == 18.26 and s15.complexity.flops_g is None


def test_real_denoising_values() -> None:
    exp = load("dn_real")
    kw, train = exp.network.kwargs, exp.train
    assert exp.network.arch == "MaIRUNet"
    assert (kw["dim"], kw["num_blocks"], kw["num_refinement_blocks"]) == (48, (4, 6, 6, 8), 4)
    assert (kw["ssm_ratio"], kw["flp_ratio"], kw["mlp_ratio"], kw["scan_len"]) == (2.0, 4.0, 1.5, 4)
    assert train.total_iter == 718250
    assert train.scheduler == Scheduler(
        "CosineAnnealingRestartCyclicLR",
        periods=(184000, 544000),
        restart_weights=(1.0, 1.0),
        eta_mins=(3e-4, 1e-6),
    )
    assert train.optimizer.type == "AdamW" and train.optimizer.weight_decay == 1e-4
    assert train.grad_clip == 0.01 and train.seed == 100
    assert train.mixup == Mixup(beta=1.2, use_identity=True)
    assert train.progressive.iters == (184000, 160000, 192000, 182250)
    assert train.progressive.gt_sizes == (128, 160, 192, 256)
    assert train.augmentation.geometric_augs is True
    assert exp.val.metrics.use_image is False and exp.val.val_milestone > train.total_iter
    assert [(d.id, d.submission_only) for d in exp.test.datasets] == [("sidd_val", False), ("dnd", True)]
    assert exp.test.protocol == "pad8"


def test_deblur_and_dehaze_values() -> None:
    deblur = load("deblur_motion")
    assert [d.id for d in deblur.test.datasets] == ["gopro", "hide"]
    assert deblur.train.mixup is None and deblur.test.metrics.use_image is True
    its, ots, r6k = (load(i) for i in ("dehaze_its", "dehaze_ots", "dehaze_r6k"))
    assert its.train.dataset_enlarge_ratio == 1
    assert ots.train.dataset_enlarge_ratio == r6k.train.dataset_enlarge_ratio == 100
    for exp in (its, ots, r6k):
        kw = exp.network.kwargs
        sizes = (kw["dim"], kw["num_blocks"], kw["num_refinement_blocks"], kw["ssm_ratio"])
        assert sizes == (24, (2, 2, 3, 4), 2, 1.2)
        assert exp.train.total_iter == 700000 and exp.train.effective_batch == 12
        assert exp.train.scheduler.periods == (184000, 516000)
        assert exp.to_dict()["complexity"] == {
            "params": 3404376,
            "flops_input_size": [256, 256],
            "flops_g": 24.033,
            "flops_mflops_per_pixel": None,
        }
    assert its.train.datasets[0].pairing == "hazy_prefix"
    assert r6k.train.datasets[0].pairing == "same_name"
    assert [d.id for d in its.test.datasets] == ["sots_indoor"]
    assert [d.id for d in ots.test.datasets] == ["sots_outdoor"]
    assert r6k.test.metrics.rgb2bgr is False


def test_only_classic_sr_reports_the_self_ensemble() -> None:
    reported = {i for i in EXPECTED_IDS if load(i).test.self_ensemble_reported}
    assert reported == {"sr_classic_x2", "sr_classic_x3", "sr_classic_x4"}


# ------------------------------------------------------------------------------------------ demo scope


@pytest.mark.parametrize("exp_id", EXPECTED_IDS)
def test_demo_is_a_small_version_of_the_same_experiment(exp_id: str) -> None:
    exp = load(exp_id)
    demo = load(exp_id, "demo")
    assert exp == load(exp_id)  # the paper scope is not changed by loading the demo one
    assert demo.scope == "demo" and demo.demo is None and demo.id == exp_id
    assert exp.demo is not None and demo.network.kwargs == exp.demo.network_kwargs
    assert demo.network.arch == exp.network.arch and demo.scale == exp.scale
    kw, paper_kw = demo.network.kwargs, exp.network.kwargs
    assert set(kw) == set(paper_kw)
    for key in ("upscale", "upsampler", "in_chans", "scan_len", "d_state", "inp_channels"):
        assert kw.get(key) == paper_kw.get(key), key
    if exp.network.arch == "MaIR":
        assert kw["embed_dim"] <= 16 and kw["depths"] == (1, 1)
    else:
        assert kw["dim"] == 8 and kw["num_blocks"] == (1, 1, 1, 1) and kw["num_refinement_blocks"] == 1
    train = demo.train
    assert 20 <= train.total_iter <= 40 and train.batch_per_gpu == 2 and train.gpus == 1
    assert train.patch.gt_size <= 64
    assert train.datasets == exp.train.datasets and demo.test == exp.test
    assert train.init_from == exp.train.init_from
    assert train.drop_path.rate == kw["drop_path_rate"]
    assert demo.complexity.params is None
    with pytest.raises(ExperimentError, match="unknown scope 'tiny'; expected paper or demo"):
        load(exp_id, "tiny")


# ------------------------------------------------------------------------------------------ errors


def test_unknown_key_names_the_file_and_the_json_path(tmp_path: Path) -> None:
    doc = _raw("sr_classic_x2")
    doc["train"]["total_iters"] = 5
    doc["network"]["kwargs"]["embed_dims"] = 180
    path = _write(tmp_path, doc)
    message = _error(path)
    assert str(path) in message
    assert "$.train.total_iters: unknown key" in message
    assert "$.network.kwargs.embed_dims: unknown key" in message
    assert "total_iter" in message.split("$.train.total_iters")[1]  # the allowed keys are listed


def test_missing_key_is_reported(tmp_path: Path) -> None:
    doc = _raw("dn_real")
    del doc["train"]["total_iter"]
    del doc["test"]["datasets"][1]["submission_only"]
    message = _error(_write(tmp_path, doc))
    assert "$.train.total_iter: missing required key" in message
    assert "$.test.datasets[1].submission_only: missing required key" in message


def test_wrong_type_and_value_are_reported(tmp_path: Path) -> None:
    doc = _raw("dehaze_its")
    doc["train"]["total_iter"] = "700k"
    doc["train"]["optimizer"]["lr"] = "2e-4"
    doc["network"]["kwargs"]["bias"] = "no"
    doc["test"]["protocol"] = "tiles"
    message = _error(_write(tmp_path, doc))
    assert "$.train.total_iter: expected integer, got string '700k'" in message
    assert "$.train.optimizer.lr: expected number, got string '2e-4' (YAML reads 1e-4 as text" in message
    assert "$.network.kwargs.bias: expected boolean" in message
    assert "$.test.protocol: expected one of ['tile', 'pad8']" in message


def test_values_no_code_would_honour_are_refused(tmp_path: Path) -> None:
    """Every key is read by code or fixed by the schema: a metric list other than PSNR and SSIM, or extra metric
    spaces for the validation (which reports the primary one), would silently do nothing, so they are errors."""
    doc = _raw("dn_color_s15")
    doc["test"]["metrics"]["names"] = ["psnr"]
    doc["val"]["metrics"]["extra_spaces"] = ["y"]
    message = _error(_write(tmp_path, doc))
    assert "$.test.metrics.names: expected ['psnr', 'ssim'], got array ['psnr']" in message
    assert "$.val.metrics.extra_spaces: expected [], got array ['y']" in message
    assert load("dn_color_s15").test.metrics.extra_spaces == ("y",)  # the test section may report Y too


def test_nullable_and_dispatched_sections_explain_the_real_alternative(tmp_path: Path) -> None:
    doc = _raw("dn_real")
    doc["train"]["grad_clip"] = "0.01"
    doc["train"]["scheduler"]["milestones"] = [10]
    doc["train"]["mixup"] = {"beta": 1.2}
    message = _error(_write(tmp_path, doc))
    assert "$.train.grad_clip: expected number, got string '0.01'" in message
    assert "$.train.scheduler.milestones: unknown key" in message
    assert "$.train.mixup.use_identity: missing required key" in message


def test_cross_field_rules(tmp_path: Path) -> None:
    doc = _raw("sr_light_s_x2")
    doc["train"]["effective_batch"] = 64
    doc["train"]["scheduler"]["milestones"] = [400000, 250000]
    doc["network"]["kwargs"]["upscale"] = 3
    message = _error(_write(tmp_path, doc))
    assert "$.train.effective_batch: expected batch_per_gpu x gpus = 32, got 64" in message
    assert "$.train.scheduler.milestones" in message
    assert "$.network.kwargs.upscale: expected the experiment scale 2" in message

    doc = _raw("sr_light_t_x3")
    doc["train"]["init_from"]["experiment"] = "sr_light_t_x2"  # default says "official" (S x2)
    expected = "$.train.init_from.experiment: expected quirk.official = 'sr_light_s_x2'"
    assert expected in _error(_write(tmp_path, doc))

    doc = _raw("dn_real")
    doc["train"]["progressive"]["iters"][-1] = 1
    assert "$.train.progressive.iters: expected the sum 718250" in _error(_write(tmp_path, doc))


def test_duplicate_keys_and_bad_yaml_are_errors(tmp_path: Path) -> None:
    text = (REPO / "params" / "experiments" / "dehaze_r6k.yaml").read_text()
    dup = tmp_path / "dup.yaml"
    dup.write_text(text + "seed: 3\nscale: 1\n")
    assert "duplicate key 'scale'" in _error(dup)
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: [unclosed\n")
    message = _error(broken)
    assert str(broken) in message and "invalid YAML" in message


def test_unknown_id_lists_the_known_ids() -> None:
    with pytest.raises(ExperimentError) as info:
        load("sr_classic_x8")
    message = str(info.value)
    assert "unknown experiment 'sr_classic_x8'" in message
    assert all(i in message for i in EXPECTED_IDS)


def test_params_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "experiments").mkdir()
    (tmp_path / "schema").mkdir()
    (tmp_path / "schema" / "experiment.schema.json").write_bytes(
        (REPO / "params" / "schema" / "experiment.schema.json").read_bytes()
    )
    doc = _raw("dehaze_ots")
    _write(tmp_path / "experiments", doc, "dehaze_ots.yaml")
    doc["id"] = "other"
    _write(tmp_path / "experiments", doc, "mislabelled.yaml")
    monkeypatch.setenv("MAIR_PARAMS_DIR", str(tmp_path))
    assert ex.params_dir() == tmp_path
    assert experiment_ids() == ["dehaze_ots", "mislabelled"]
    assert load("dehaze_ots").id == "dehaze_ots"
    with pytest.raises(ExperimentError, match=r"\$\.id: expected 'mislabelled' \(the file name\)"):
        load("mislabelled")
    monkeypatch.setenv("MAIR_PARAMS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ExperimentError, match="MAIR_PARAMS_DIR"):
        ex.params_dir()
