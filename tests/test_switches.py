"""``mair.runtime.switches`` (every MAIR_* variable in one place), the scan backend deciding the VMM's fused paths,
and ``mair info --runtime``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mair.cli import main
from mair.runtime import switches
from mair.runtime.switches import SwitchError

REPO = Path(__file__).resolve().parents[1]
_READ = re.compile(r"""(environ\.get|getenv|environ\.pop|environ\[)\(?\s*["']MAIR_""")
_NAME = re.compile(r"\bMAIR_[A-Z0-9_]+")
NOT_VARIABLES = {"MAIR_UNET"}  # a Python constant of mair.tasks (the U-Net family), not an environment variable


@pytest.fixture(autouse=True)
def _no_inherited_switches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for sw in switches.SWITCHES:
        monkeypatch.delenv(sw.var, raising=False)
    switches.reset()
    yield
    switches.reset()


def test_no_module_reads_a_mair_variable_itself() -> None:
    """Every reader goes through switches: no ``os.environ.get("MAIR_...")`` (or getenv, or ``environ[...]``) in
    mair/ or the workflow outside switches.py."""
    files = [*REPO.joinpath("mair").rglob("*.py"), *REPO.joinpath("workflow").rglob("*.smk"), REPO / "Snakefile"]
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in files
        if path.name != "switches.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _READ.search(line) and "environ[" not in line.split("=")[0]  # the Snakefile writes MAIR_PARAMS_DIR
    ]
    assert offenders == []


def test_every_variable_named_in_mair_and_docs_is_declared() -> None:
    declared = {sw.var for sw in switches.SWITCHES}
    texts = [p.read_text() for p in [*REPO.joinpath("mair").rglob("*.py"), *REPO.joinpath("docs").glob("*.md")]]
    named = {name for text in texts for name in _NAME.findall(text)} - NOT_VARIABLES - {"MAIR_SHARED_DIR"}
    assert named - declared == set()


def test_docs_table_is_generated_from_the_declarations() -> None:
    """docs/switches.md holds exactly the table the declarations give (regenerate it with markdown_table())."""
    assert switches.markdown_table() in (REPO / "docs" / "switches.md").read_text()
    for page in ("README.md", "docs/architecture.md"):
        assert "switches.md" in (REPO / page).read_text(), page


def test_the_module_is_light() -> None:
    code = "import sys, mair.runtime.switches; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_environment_default_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    assert switches.get("MAIR_TRITON_CHAIN") == "scan" and switches.source("triton_chain") == "default"
    monkeypatch.setenv("MAIR_TRITON_CHAIN", "loop")
    assert switches.get("triton_chain") == "loop" and switches.source("MAIR_TRITON_CHAIN") == "environment"
    monkeypatch.setenv("MAIR_TRITON_CHAIN", "scan")  # a new text is read again
    assert switches.get("triton_chain") == "scan"
    monkeypatch.setenv("MAIR_SCAN_BACKEND", " Torch ")
    assert switches.get("scan_backend") == "torch"
    monkeypatch.setenv("MAIR_SCAN_BACKEND", "auto")
    assert switches.get("scan_backend") is None
    monkeypatch.setenv("MAIR_SCAN_CPU_WORKSPACE_MB", "")  # empty: unset
    assert switches.get("scan_cpu_workspace_mb") == 256.0
    monkeypatch.setenv("MAIR_GPU_IDS", "")  # except where empty means none
    assert switches.get("gpu_ids") == ()
    assert switches.get("gpu_ids", {"MAIR_GPU_IDS": "0, 2,-1"}) == ("0", "2")  # another process's environment


@pytest.mark.parametrize(
    ("var", "text", "expected"),
    [
        ("MAIR_TRITON_TILES", "64,8", "'BL,BD,warps' (three positive integers)"),
        ("MAIR_DWCONV_TILES", "64,24,4", "'BP,BC,warps' (three powers of two)"),
        ("MAIR_TRITON_CHAIN", "tree", "scan or loop"),
        ("MAIR_SCAN_CUSTOM_OP", "maybe", "1 or 0 (true/false, yes/no, on/off)"),
        ("MAIR_SCAN_CPU_WORKSPACE_MB", "lots", "a number of MiB, 0 or more"),
        ("MAIR_SCAN_CPU_BLOCK_MB", "0", "a number of MiB, more than 0"),
        ("MAIR_PREPARE_WORKERS", "-2", "a positive whole number"),
        ("MAIR_MAX_EXTRACT_SIZE", "big", "a size such as 800M or 500G"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, text: str, expected: str
) -> None:
    monkeypatch.setenv(var, text)
    with pytest.raises(SwitchError) as error:
        switches.get(var)
    assert str(error.value) == f"{var}={text!r}: expected {expected}"
    with pytest.raises(SwitchError, match=var):  # from Python, checked alike
        switches.set_values(**{var: text})


def test_override_wins_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIR_SCAN_BACKEND", "reference")
    with switches.override(scan_backend="torch", triton_tiles=(32, 4, 2)):
        assert switches.get("scan_backend") == "torch" and switches.source("scan_backend") == "python"
        assert switches.get("MAIR_TRITON_TILES") == (32, 4, 2)
        with switches.override(scan_backend=None):  # None: the default, whatever the environment says
            assert switches.get("scan_backend") is None
        assert switches.get("scan_backend") == "torch"
    assert switches.get("scan_backend") == "reference" and switches.get("triton_tiles") is None
    with pytest.raises(KeyError, match="no switch"):
        switches.get("MAIR_NOPE")


def test_values_set_from_python_reach_a_child_process() -> None:
    code = "from mair.runtime import switches; print(switches.get('scan_backend'), switches.source('scan_backend'))"
    with switches.override(scan_backend="reference"):
        env = switches.child_environ()
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["reference", "environment"]
    assert "MAIR_SCAN_BACKEND" not in switches.child_environ()


def test_the_backend_decides_the_vmm_paths() -> None:
    from mair.models.scan.registry import chosen_backend

    torch_backend = chosen_backend("torch", "cpu")
    assert torch_backend.plan(grad=False, custom_ops=False).nss_order  # inference: order folded in
    assert not torch_backend.plan(grad=True, custom_ops=False).nss_order  # no backward: gathered in training
    assert not torch_backend.plan(grad=False, custom_ops=True).nss_order  # no custom op: gathered when compiled
    triton = chosen_backend("triton", "cpu")  # the interpreter runs it on the CPU (tests/conftest.py)
    for grad in (False, True):
        plan = triton.plan(grad=grad, custom_ops=True)
        assert plan.nss_order and plan.delta_in_op and plan.gate_in_op and plan.token_conv
    assert not any(chosen_backend("reference", "cpu").plan(grad=False, custom_ops=False)[1:])


def test_the_vmm_calls_what_the_plan_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend registered with the torch scan and its folded scan under a new name: the VMM calls that scan
    (found through the plan, not by the backend's name) and gets the gathered path's result."""
    from mair.models import from_official
    from mair.models.scan import registry
    from mair.models.scan.torch_nss import nss_scan_torch

    calls: list[int] = []
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setitem(registry._FUNCTIONS, "spy:folded", lambda *a, **k: calls.append(1) or nss_scan_torch(*a, **k))
    registry.register_backend(
        "folded_spy", "mair.models.scan.torch_backend:load", fusions=registry.Fusions(nss_scan="spy:folded")
    )
    torch.manual_seed(0)
    model = from_official("MaIR", upscale=2, embed_dim=8, depths=[2], d_state=4, ssm_ratio=1.5, mlp_ratio=1.5,
                          upsampler="pixelshuffledirect", scan_len=4, drop_path_rate=0.0).eval()  # fmt: skip
    x = torch.rand(1, 3, 6, 7)
    vmms = [m for m in model.modules() if hasattr(m, "fold_scan_order")]
    with torch.no_grad():
        for vmm in vmms:
            vmm.fold_scan_order = False
        gathered = model(x)
        for vmm in vmms:
            del vmm.fold_scan_order  # the class default again: take what the backend offers
        with switches.override(scan_backend="folded_spy"):
            folded = model(x)
    assert len(calls) == 2  # one VMM per block, two blocks
    assert (folded - gathered).abs().max() <= 1e-5 * gathered.abs().max()


def test_info_runtime_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--runtime", "--device", "cpu", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in info["switches"]] == [sw.var for sw in switches.SWITCHES]
    assert {row["source"] for row in info["switches"]} == {"default"}
    train, infer = info["workloads"]["train"], info["workloads"]["infer"]
    assert train["scan_backend"] == infer["scan_backend"] == "torch" and "automatic choice" in train["scan_backend_why"]
    assert (train["vmm"]["nss_order"], infer["vmm"]["nss_order"]) == (False, True)
    assert train["precision"] == "fp32" and train["compile_backend"] is None and train["fused_adam"] is False

    monkeypatch.setenv("MAIR_SCAN_BACKEND", "reference")
    monkeypatch.setenv("MAIR_TRITON_CHAIN", "loop")
    assert main(["info", "--runtime", "--device", "cpu", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in info["switches"]}
    assert rows["MAIR_TRITON_CHAIN"]["value"] == "loop" and rows["MAIR_TRITON_CHAIN"]["source"] == "environment"
    infer = info["workloads"]["infer"]
    assert infer["scan_backend"] == "reference" and "set by MAIR_SCAN_BACKEND=reference" in infer["scan_backend_why"]
    assert infer["vmm"]["nss_order"] is False and infer["path"] == "custom"


def test_info_runtime_text_and_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--runtime", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "MAIR_SCAN_BACKEND" in out and "Training: default path on cpu" in out and "VMM paths:" in out
    assert main(["info"]) == 2
    assert "--runtime" in capsys.readouterr().err
    monkeypatch.setenv("MAIR_SCAN_CUSTOM_OP", "maybe")
    assert main(["info", "--runtime", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mair info: error: MAIR_SCAN_CUSTOM_OP='maybe': expected 1 or 0 (true/false, yes/no, on/off)"


@pytest.mark.slow
def test_model_with_the_fused_scan_matches_the_gathered_path() -> None:
    """``VMM.fold_scan_order`` off: the Triton backend through the gathered path (four copies, ``selective_scan``,
    inverse gathers), the same outputs and gradients as its fused path."""
    from tests.conftest import assert_vmm_switch_keeps_results

    assert_vmm_switch_keeps_results("fold_scan_order", "layers.0.residual_group.blocks.0.self_attention.Ds")
