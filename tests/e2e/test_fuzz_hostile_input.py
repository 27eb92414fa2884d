"""Property-based fuzzing of every input path (hypothesis, fixed budget, derandomised).

Valid inventories, problems, profiles, plans and deployment manifests are mutated (a value replaced
by a hostile one, a key dropped or added, the bytes truncated, re-encoded or salted with NUL), and
every result goes through the real entry points: `planner.cli.main` in-process for speed, the
runtime's loaders for deployments, and a sample through the `edvit` command in a subprocess.

The properties, for every input: the exit code is 0, 2 or 3; stderr has at most 3 lines and no
traceback; no input file changed; and nothing hangs (each run has a wall-clock alarm).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.cli import main
from planner.errors import InputError
from tests.conftest import EXAMPLES, PLANNING, ROOT

PROBLEM = PLANNING / "instances" / "p07_c10_d6_random.yaml"
INVENTORY = EXAMPLES / "pi4-cluster.yaml"
PROFILE = ROOT / "planner" / "data" / "profiles" / "vit_tiny_patch16_224.json"
ALLOWED_EXIT = {0, 2, 3}
pytestmark = pytest.mark.slow  # ~30 s on an idle 2-core host; CI runs it
ALARM_S = 60

FUZZ = settings(max_examples=25, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- hostile values and mutations -----------------------------------------------------------------
def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


NUMBERS = st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**6, 10**30, 1e30, 1e300, -1e300,
                           math.inf, -math.inf, math.nan, 1e-300, 0.5, True, 40, 50])
TEXTS = st.sampled_from(["", "../../etc/passwd", "/abs/path", "x" * 5000, "\u0663", "nan",
                         "1e300GiB", "inf", "4 parsecs", "pi4b-4gb", "\x00", "memory",
                         "C:\\windows", "~/x"])
HOSTILE = st.one_of(NUMBERS, TEXTS, st.none(), st.just([]), st.just({}),
                    st.integers(60, 200).map(_nested),
                    st.lists(NUMBERS, max_size=3))


def _paths(doc, prefix=()):
    """Every (key path) in a JSON-like document."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:4]):
            yield from _paths(value, prefix + (i,))


def _mutated(doc, path, how, value):
    doc = copy.deepcopy(doc)
    if not path:
        return value if how == "replace" else [doc]
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif how == "add" and isinstance(parent, dict):
        parent["unexpected_field"] = value
    elif how == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    else:
        parent[last] = [parent[last]]
    return doc


def mutations(doc) -> st.SearchStrategy:
    paths = list(_paths(doc))
    return st.builds(_mutated, st.just(doc), st.sampled_from(paths),
                     st.sampled_from(["replace", "replace", "replace", "delete", "add",
                                      "duplicate", "wrap"]), HOSTILE)


def byte_mutations(text: str) -> st.SearchStrategy:
    data = text.encode()
    return st.one_of(
        st.integers(0, len(data)).map(lambda n: data[:n]),
        st.integers(0, len(data)).map(lambda n: data[:n] + b"\x00" + data[n:]),
        st.just(text.encode("utf-16")),
        st.just(b"\xff\xd8\xff" + data),
        st.integers(0, len(data)).map(lambda n: data[:n] + b"\xe9" + data[n:]),
        st.just(("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"b{i}: &b{i} [" + ", ".join([f"*{'a' if i == 0 else f'b{i - 1}'}"] * 9) + "]\n"
            for i in range(8))).encode()),
    )


def _dump(doc, path: Path, as_json: bool) -> None:
    text = json.dumps(doc) if as_json else yaml.safe_dump(doc, allow_unicode=True)
    path.write_text(text)


# -- running entry points -------------------------------------------------------------------------
@contextlib.contextmanager
def _alarm(seconds: int = ALARM_S):
    def timeout(signum, frame):
        raise AssertionError(f"hang: no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _digest(paths) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def run_cli(argv: list, inputs: list[Path]) -> tuple[int, str]:
    """`edvit ARGV` in-process; asserts the properties and returns (exit code, stderr)."""
    before = _digest(inputs)
    err, out = io.StringIO(), io.StringIO()
    with _alarm(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # usage errors
            code = exc.code
    check_properties(code, err.getvalue(), argv)
    assert _digest(inputs) == before, f"an input changed: {argv}"
    return code, err.getvalue()


def check_properties(code, stderr: str, argv) -> None:
    assert code in ALLOWED_EXIT, f"exit {code} for {argv}: {stderr}"
    assert "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) <= 3, stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fresh(work: Path, name: str) -> Path:
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


# -- the properties, one format at a time ----------------------------------------------------------
@FUZZ
@given(doc=mutations(yaml.safe_load(INVENTORY.read_text())))
def test_mutated_inventories(work, doc):
    folder = _fresh(work, "inventory")
    path = folder / "inv.yaml"
    _dump(doc, path, as_json=False)
    run_cli(["plan", path, "--time-limit", "2", "--out", folder / "plan.json",
             "--emit-problem", folder / "problem.yaml"], [path])


@FUZZ
@given(doc=mutations(yaml.safe_load(PROBLEM.read_text())))
def test_mutated_problems(work, doc):
    folder = _fresh(work, "problem")
    path = folder / "p.yaml"
    _dump(doc, path, as_json=False)
    run_cli(["solve", path, "--time-limit", "2", "--out", folder / "plan.json"], [path])


@FUZZ
@given(doc=mutations(json.loads(PROFILE.read_text())))
def test_mutated_profiles(work, doc):
    folder = _fresh(work, "profile")
    path = folder / "profile.json"
    _dump(doc, path, as_json=True)
    inv = folder / "inv.yaml"
    inv.write_text(yaml.safe_dump({"model": {"arch": "vit_tiny_patch16_224", "num_classes": 10},
                                   "devices": [{"kind": "pi4b-4gb", "count": 3}]}))
    run_cli(["plan", inv, "--profile", path, "--time-limit", "2"], [path, inv])


@pytest.fixture(scope="module")
def valid_plan(work) -> dict:
    code = main(["solve", str(PROBLEM), "--out", str(work / "valid-plan.json")])
    assert code == 0
    return json.loads((work / "valid-plan.json").read_text())


@FUZZ
@given(data=st.data())
def test_mutated_plans_into_materialize(work, valid_plan, data):
    doc = data.draw(mutations(valid_plan))
    folder = _fresh(work, "plan")
    path = folder / "plan.json"
    _dump(doc, path, as_json=True)
    # no base model exists: a plan that passes every check stops there, with exit code 2
    run_cli(["materialize", path, "--base", folder / "no-base", "--data", "digits",
             "--out", folder / "deploy"], [path])


@FUZZ
@given(data=byte_mutations(INVENTORY.read_text()),
       command=st.sampled_from(["plan", "solve", "profile-json", "plan-json"]))
def test_corrupt_bytes(work, data, command):
    folder = _fresh(work, "bytes")
    path = folder / ("input.json" if command.endswith("json") else "input.yaml")
    path.write_bytes(data)
    argv = {"plan": ["plan", path], "solve": ["solve", path],
            "profile-json": ["plan", INVENTORY, "--profile", path],
            "plan-json": ["materialize", path, "--base", "x", "--data", "digits",
                          "--out", folder / "d"]}[command]
    run_cli(argv + (["--time-limit", "2"] if command in ("plan", "solve") else []), [path])


FLAGS = {
    "plan": ["--time-limit", "--seed", "--workers", "--out", "--emit-problem", "--profile",
             "--max-devices"],
    "solve": ["--time-limit", "--seed", "--workers", "--out", "--max-devices"],
    "whatif": ["--vary", "--vary", "--target-latency", "--time-limit", "--seed", "--processes",
               "--max-scenarios", "--out", "--plot"],
}
FLAG_VALUES = st.sampled_from([
    "nan", "inf", "-1", "0", "1", "2", "2147483648", "18446744073709551616", "1e300", "\u0663",
    "pi4b-4gb=1..1000000000", "pi4b-4gb=1..18446744073709551616", "pi4b-4gb=\u0661..\u0663",
    "pi4b-4gb=1..3", "pi4=0..2", "pi4=2..1", "x=", "=1", "INPUT", "DIR", "PARENT_IS_FILE/out",
    "/proc/edvit/out.json", ""])


@FUZZ
@given(command=st.sampled_from(sorted(FLAGS)), data=st.data())
def test_hostile_command_lines(work, command, data):
    folder = _fresh(work, "argv")
    inventory = folder / "inv.yaml"
    shutil.copy(INVENTORY, inventory)
    problem = folder / "p.yaml"
    shutil.copy(PROBLEM, problem)
    (folder / "file").write_text("x")
    source = problem if command == "solve" else inventory
    argv = [command, source]
    if command == "whatif":
        argv += ["--vary", "pi4=1..2", "--processes", "1"]
    for _ in range(data.draw(st.integers(1, 3))):
        flag = data.draw(st.sampled_from(FLAGS[command]))
        value = data.draw(FLAG_VALUES)
        value = {"INPUT": str(source), "DIR": str(folder),
                 "PARENT_IS_FILE/out": str(folder / "file" / "out")}.get(value, value)
        argv += [flag, value]
    if "--time-limit" not in argv:
        argv += ["--time-limit", "2"]
    with contextlib.chdir(folder):  # relative outputs land in the scratch folder
        run_cli(argv, [inventory, problem, folder / "file"])


# -- deployments ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment(work) -> Path:
    """A tiny deployment written with the real writers (random weights, no training)."""
    torch = pytest.importorskip("torch")
    from planner.vit_shape import PruneCounts, ViTShape
    from vit_ops.architecture import build_vit
    from vit_ops.base_model import BaseModelSpec, LoadedBase, save_base
    from vit_ops.deploy import (DeploymentManifest, FusionSpec, SubModelEntry, SubModelSpec,
                                save_manifest, save_part)
    from vit_ops.fusion import FusionHead
    from vit_ops.submodel import build_submodel

    torch.manual_seed(0)
    shape = ViTShape(arch="fuzz_vit", img_size=16, patch_size=8, embed_dim=16, depth=1,
                     num_heads=2, head_dim=8, mlp_hidden=32, num_classes=4)
    full = PruneCounts(embed_dim=16, head_dim=8, heads=[2], mlp_hidden=[32])
    small = PruneCounts(embed_dim=8, head_dim=8, heads=[1], mlp_hidden=[16])
    root = work / "deploy"
    names = [str(c) for c in range(4)]
    base = LoadedBase(model=build_vit(shape, full, device="cpu").eval(),
                      spec=BaseModelSpec(shape=shape, class_names=names, data="digits"),
                      source="fuzz")
    save_base(base, root / "base", force=True)
    entries = []
    for i, (classes, counts) in enumerate([([0, 1], full), ([2, 3], small)]):
        sub = build_submodel(shape, counts, len(classes) + 1, device="cpu")
        params = sub.backbone_params()
        directory = f"submodels/{i}-dev{i}"
        save_part(root / directory, sub, SubModelSpec(
            device=f"dev{i}", classes=classes, class_names=[names[c] for c in classes],
            shape=shape, counts=counts, num_outputs=len(classes) + 1,
            feature_dim=counts.embed_dim, params=params,
            head_params=sum(p.numel() for p in sub.head.parameters()), predicted_params=None))
        entries.append(SubModelEntry(index=i, device=f"dev{i}", classes=classes, dir=directory,
                                     params=params, predicted_params=None))
    fusion = FusionHead([16, 8], 8, 4)
    save_part(root / "fusion", fusion, FusionSpec(
        device="dev0", in_features=[16, 8], hidden=8, num_classes=4,
        params=sum(p.numel() for p in fusion.parameters())))
    save_manifest(root, DeploymentManifest(
        plan_name="fuzz", num_classes=4, class_names=names, data="digits", img_size=16,
        norm_mean=0.5, norm_std=0.5, base_params=1, submodels=entries, fusion_device="dev0"))
    return root


def _open_everything(deploy_dir: Path) -> None:
    """What `serve` and `evaluate` load before any image: the runtime source, every device's
    sub-models, the fusion head and the base."""
    from vit_ops.deploy import load_all_submodels, load_deployment_base, load_fusion
    from vit_ops.runtime.deployment import open_deployment

    source = open_deployment(deploy_dir)
    for slot in source.slots():
        source.load_worker(slot.device)
    source.load_fusion()
    load_all_submodels(deploy_dir)
    load_fusion(deploy_dir)
    load_deployment_base(deploy_dir)


def test_the_fuzz_deployment_itself_loads(deployment):
    _open_everything(deployment)


@FUZZ
@given(data=st.data())
def test_mutated_deployment_manifests(work, deployment, data):
    manifest = json.loads((deployment / "deployment.json").read_text())
    doc = data.draw(mutations(manifest))
    folder = work / "deploy-mutated"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(deployment, folder)
    (folder / "deployment.json").write_text(json.dumps(doc))
    with _alarm():
        try:
            _open_everything(folder)
        except InputError as exc:
            assert "\n" not in exc.one_line()


@FUZZ
@given(part=st.sampled_from(["fusion/model.json", "submodels/1-dev1/model.json",
                             "base/model.json"]), data=st.data())
def test_mutated_part_specs(work, deployment, part, data):
    spec = json.loads((deployment / part).read_text())
    doc = data.draw(mutations(spec))
    folder = work / "deploy-spec"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(deployment, folder)
    (folder / part).write_text(json.dumps(doc))
    with _alarm():
        try:
            _open_everything(folder)
        except InputError as exc:
            assert "\n" not in exc.one_line()


def test_deployment_paths_may_not_leave_the_deployment(work, deployment, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(deployment / "submodels" / "0-dev0", outside)
    folder = work / "deploy-escape"
    for target in ["../elsewhere", str(outside), "link"]:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(deployment, folder)
        (folder / "link").symlink_to(outside)
        manifest = json.loads((folder / "deployment.json").read_text())
        manifest["submodels"][0]["dir"] = target
        (folder / "deployment.json").write_text(json.dumps(manifest))
        with pytest.raises(InputError, match="inside|outside"):
            _open_everything(folder)


# -- a sample through the real command ------------------------------------------------------------
SUBPROCESS_CASES = [
    ["plan", "INV", "--out", "INV"],
    ["plan", "INV", "--seed", "2147483648"],
    ["solve", "PROBLEM", "--time-limit", "nan"],
    ["plan", "DEEP"],
    ["plan", "INV", "--bogus-flag"],
    ["whatif", "INV", "--vary", "pi4=1..18446744073709551616"],
]


@pytest.mark.parametrize("argv", SUBPROCESS_CASES, ids=lambda a: " ".join(a[:3]))
def test_a_sample_through_the_edvit_command(tmp_path, argv):
    inventory = tmp_path / "inv.yaml"
    shutil.copy(INVENTORY, inventory)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 3000 + "]" * 3000)
    names = {"INV": inventory, "PROBLEM": PROBLEM, "DEEP": deep}
    argv = [str(names.get(a, a)) for a in argv]
    before = _digest([inventory])
    result = subprocess.run([sys.executable, "-m", "planner.cli", *argv], capture_output=True,
                            text=True, timeout=ALARM_S, cwd=tmp_path)
    check_properties(result.returncode, result.stderr, argv)
    assert result.returncode == 2 and "error" in result.stderr
    assert _digest([inventory]) == before


def test_weights_must_match_their_spec_before_a_fleet_starts(work, deployment):
    folder = work / "deploy-weights"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(deployment, folder)
    shutil.copy(folder / "fusion" / "model.safetensors",
                folder / "submodels" / "1-dev1" / "model.safetensors")
    from vit_ops.runtime.deployment import open_deployment

    with pytest.raises(InputError, match="does not fit its spec"):
        open_deployment(folder)
    (folder / "submodels" / "1-dev1" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not a readable safetensors"):
        open_deployment(folder)


# -- the scale work's inputs: similarity, materialize --resume, --train/--val layouts -------------
@pytest.fixture(scope="module")
def digits_base(work) -> Path:
    """A random-init 10-class base for digits, with its recorded split (no training), and a plan
    for it: what `similarity` and `materialize --resume` take."""
    pytest.importorskip("torch")
    from planner.vit_shape import PruneCounts, ViTShape
    from vit_ops.architecture import build_vit
    from vit_ops.base_model import BaseModelSpec, LoadedBase, save_base
    from vit_ops.data import DataArgs, make_split
    from vit_ops.manual_plan import manual_plan

    shape = ViTShape(arch="fuzz_vit", img_size=16, patch_size=8, embed_dim=16, depth=1,
                     num_heads=2, head_dim=8, mlp_hidden=32, num_classes=10)
    full = PruneCounts(embed_dim=16, head_dim=8, heads=[2], mlp_hidden=[32])
    base = LoadedBase(model=build_vit(shape, full, device="cpu").eval(),
                      spec=BaseModelSpec(shape=shape, class_names=[str(c) for c in range(10)],
                                         data="digits"),
                      source="fuzz", split=make_split(DataArgs(data="digits")))
    root = save_base(base, work / "digits-base" / "base", force=True)
    plan = manual_plan(shape, [list(range(5)), list(range(5, 10))], [1.0, 0.5], ["d0", "d1"])
    (root.parent / "plan.json").write_text(plan.model_dump_json())
    return root


@FUZZ
@given(part=st.sampled_from(["model.json", "split.json"]), data=st.data())
def test_similarity_of_mutated_base_directories(work, digits_base, part, data):
    folder = _fresh(work, "similarity")
    base = folder / "base"
    shutil.copytree(digits_base, base)
    doc = data.draw(mutations(json.loads((base / part).read_text())))
    (base / part).write_text(json.dumps(doc))
    out = data.draw(st.sampled_from([folder / "sim.yaml", base / "model.safetensors",
                                     base / part, base, folder / "sim.yaml" / "x"]))
    run_cli(["similarity", "--base", base, "--out", out, "--num-workers", "0"],
            [base / "model.json", base / "split.json", base / "model.safetensors"])


@FUZZ
@given(state=st.one_of(mutations({"fingerprint": "0" * 64}),
                       byte_mutations('{"fingerprint": "00"}')),
       layout=st.sampled_from(["state", "no-state", "partial-file", "partial-link"]))
def test_materialize_resume_of_hostile_partial_directories(work, digits_base, state, layout):
    folder = _fresh(work, "resume")
    partial = folder / ".deploy.partial"
    if layout == "partial-file":
        partial.write_text("a file of the user's")
    elif layout == "partial-link":
        (folder / "foreign").mkdir()
        partial.symlink_to(folder / "foreign")
    else:
        partial.mkdir()
        if layout == "state":
            target = partial / "materialize-state.json"
            target.write_bytes(state if isinstance(state, bytes) else json.dumps(state).encode())
    plan = digits_base.parent / "plan.json"
    code, _ = run_cli(["materialize", plan, "--base", digits_base, "--data", "digits",
                       "--out", folder / "deploy", "--resume", "--no-onnx", "--max-steps", "1"],
                      [plan, digits_base / "model.json", digits_base / "model.safetensors"])
    assert code == 2 and not (folder / "deploy").exists()  # no state of these inputs: refused
    if layout == "partial-file":
        assert partial.read_text() == "a file of the user's"


LAYOUT_PARTS = st.sampled_from(["image", "image", "image", "text", "empty-png", "loop-parent",
                                "loop-self", "dangling", "subdir-image", "fifo"])


@settings(FUZZ, max_examples=15)
@given(classes=st.lists(st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=3,
                                 unique=True), min_size=2, max_size=3),
       parts=st.lists(LAYOUT_PARTS, min_size=1, max_size=6), data=st.data())
def test_train_val_test_layouts(work, classes, parts, data):
    """`--train DIR --val DIR [--test DIR]` folders with differing, empty or missing classes,
    files that are not images, symbolic link loops and FIFOs: a split or one InputError."""
    import os

    from PIL import Image

    from vit_ops.data import DataArgs, make_split, splits_from_record
    from vit_ops.preprocess import scratch_preprocess

    folder = _fresh(work, "layouts")
    roots = []
    for k, names in enumerate(classes):
        root = folder / f"split{k}"
        root.mkdir()
        roots.append(root)
        for name in names:
            (root / name).mkdir()
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / name / f"{i}.png")
    for j, part in enumerate(parts):  # j: every step's file has a name of its own
        root = data.draw(st.sampled_from(roots))
        names = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
        where = data.draw(st.sampled_from(names)) if names else root
        if part == "text":
            (where / f"x{j}.png").write_text("not an image")
        elif part == "empty-png":
            (where / f"e{j}.png").write_bytes(b"")
        elif part == "loop-parent":
            os.symlink("..", where / f"up{j}")
        elif part == "loop-self":
            os.symlink(".", where / f"me{j}")
        elif part == "dangling":
            os.symlink("nowhere.png", where / f"d{j}.png")
        elif part == "subdir-image":
            (where / f"deep{j}").mkdir()
            Image.new("RGB", (8, 8)).save(where / f"deep{j}" / "z.png")
        elif part == "fifo":
            os.mkfifo(where / f"f{j}.png")
    args = DataArgs(train=str(roots[0]), val=str(roots[1]),
                    test=str(roots[2]) if len(roots) > 2 else None)
    with _alarm():
        try:
            record = make_split(args)
            splits = splits_from_record(record, scratch_preprocess(8))
            for split in (splits.train, splits.val, splits.test):
                split.first()
        except InputError as exc:
            assert "\n" not in exc.one_line()
