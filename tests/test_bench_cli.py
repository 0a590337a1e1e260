"""fusedopt-bench: every suite in a tiny configuration, output checked; --check
catches an injected wrong contender; bad input exits 2 without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROW_KEYS = {"suite", "case", "algorithm", "dtype", "tensors", "elements", "contender", "check",
            "ms", "ms_min", "ms_max", "gb_per_s", "pct_roofline", "speedup_vs_raw",
            "speedup_vs_keras", "extra"}


def bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "out.json"
    png = tmp_path / "out.png"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run(
        [sys.executable, "-m", "fusedopt.bench", "--json", str(out), "--plot", str(png), *args],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )
    data = json.loads(out.read_text()) if out.exists() and out.stat().st_size else None
    return r, data


def check_schema(data: dict) -> None:
    assert data["schema"] == "fusedopt-bench/1"
    m = data["machine"]
    for key in ("cpu", "cores", "memory_gib", "tensorflow", "fusedopt", "date"):
        assert key in m, key
    assert m["fusedopt"]["tensorflow_built_against"]
    assert "float64 reference" in data["method"]
    for row in data["rows"]:
        assert set(row) == ROW_KEYS


def test_sizes_suite_table_json_and_plot(tmp_path):
    r, data = bench(tmp_path, "--suite", "sizes", "--sizes", "1000,20000", "--algorithms",
                    "adam,rmsprop", "--repeats", "2", "--warmup", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    check_schema(data)
    assert "suite: sizes" in r.stdout and "tf.raw_ops loop" in r.stdout
    rows = data["rows"]
    contenders = {x["contender"] for x in rows}
    assert {"fusedopt", "fusedopt per-variable", "tf.raw_ops loop", "keras", "fusedopt+XLA",
            "keras+XLA", "roofline"} <= contenders
    assert all(x["check"].startswith("ok") or x["check"] == "n/a" for x in rows), [x["check"] for x in rows]
    fused = [x for x in rows if x["contender"] == "fusedopt"]
    assert len(fused) == 4 and all(x["ms"] > 0 and x["gb_per_s"] > 0 for x in fused)
    assert all(x["speedup_vs_raw"] and x["speedup_vs_keras"] for x in fused)
    png = (tmp_path / "out.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_many_suite_and_other_dtypes(tmp_path):
    r, data = bench(tmp_path, "--suite", "many", "--many", "30x500", "--algorithms", "lamb,sgd",
                    "--dtypes", "float32,bfloat16", "--repeats", "1", "--warmup", "0", "--no-xla")
    assert r.returncode == 0, r.stderr[-3000:]
    check_schema(data)
    cases = {(x["algorithm"], x["dtype"]) for x in data["rows"]}
    assert cases == {("lamb", "float32"), ("lamb", "bfloat16"), ("sgd", "float32"),
                     ("sgd", "bfloat16")}
    assert all(x["tensors"] == 30 for x in data["rows"])
    assert all(not x["check"].startswith("WRONG") for x in data["rows"])


def test_sizes_suite_every_algorithm_with_the_per_variable_contender(tmp_path):
    """--algorithms all without --quick: every rule's "fusedopt per-variable"
    contender (one op call per variable) runs whole steps, rule state
    included (Nadam's u_product from _fused_prepare_step), checked and timed."""
    from fusedopt.bench.algorithms import ALGORITHMS

    r, data = bench(tmp_path, "--suite", "sizes", "--sizes", "1000", "--algorithms", "all",
                    "--repeats", "1", "--warmup", "0", "--no-xla")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = data["rows"]
    assert {x["algorithm"] for x in rows} == set(ALGORITHMS)
    per_variable = {x["algorithm"]: x for x in rows if x["contender"] == "fusedopt per-variable"}
    assert set(per_variable) == set(ALGORITHMS)
    for x in per_variable.values():
        assert x["check"] == "ok" and x["ms"] > 0, x
    assert all(x["check"] == "ok" or x["check"] == "n/a" for x in rows), [
        (x["algorithm"], x["contender"], x["check"]) for x in rows]


def test_raw_ops_contender_in_float64_and_float16(tmp_path):
    """The tf.raw_ops loop passes TF's training ops every scalar in the
    variable's dtype (an op takes var, lr and its other scalars as one type):
    it runs, is checked and timed for float64 and float16 as for float32."""
    from fusedopt.bench.algorithms import ALGORITHMS

    with_raw = {name for name, a in ALGORITHMS.items() if a.raw is not None}
    r, data = bench(tmp_path, "--suite", "sizes", "--sizes", "1000", "--algorithms", "all",
                    "--dtypes", "float64,float16", "--repeats", "1", "--warmup", "0",
                    "--no-xla", "--quick")
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert data is not None, r.stderr[-3000:]
    rows = data["rows"]
    assert {(x["algorithm"], x["dtype"]) for x in rows} == {
        (a, d) for a in ALGORITHMS for d in ("float64", "float16")}
    raw = {(x["algorithm"], x["dtype"]): x for x in rows if x["contender"] == "tf.raw_ops loop"}
    assert set(raw) == {(a, d) for a in with_raw for d in ("float64", "float16")}
    for (algorithm, dtype), x in raw.items():
        # float64: the op's numbers are the reference's (its scalars are the
        # reference's float32 values). float16: the op computes in float16,
        # as Keras' built-in does, whose verdict it may share.
        assert x["check"] == "ok" or dtype == "float16" and x["check"].startswith("WRONG"), x
        assert (x["ms"] is not None) == (x["check"] == "ok"), x
    for x in rows:
        if x["contender"] == "fusedopt" and x["algorithm"] in with_raw and x["ms"] is not None:
            assert x["speedup_vs_raw"] or raw[(x["algorithm"], x["dtype"])]["ms"] is None, x


def test_models_suite(tmp_path):
    r, data = bench(tmp_path, "--suite", "models", "--models", "resnet50", "--repeats", "1",
                    "--warmup", "0", "--no-xla")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [x for x in data["rows"] if x["contender"] == "fusedopt"]
    assert rows[0]["case"] == "ResNet-50" and rows[0]["tensors"] == 214
    assert 25_000_000 < rows[0]["elements"] < 26_000_000
    assert rows[0]["check"] == "ok"


def test_fit_suite(tmp_path):
    r, data = bench(tmp_path, "--suite", "fit", "--quick", "--fit-models", "mlp,resnet50",
                    "--repeats", "3", "--inject-wrong")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = data["rows"]
    cases = sorted({x["case"] for x in rows})
    assert len(cases) == 2 and cases[0].startswith("MLP") and cases[1].startswith("ResNet-50")
    resnet = [x for x in rows if x["case"] == cases[1]]
    assert resnet[0]["tensors"] == 214 and 25_000_000 < resnet[0]["elements"] < 26_000_000
    for case in cases:
        by = {x["contender"]: x for x in rows if x["case"] == case}
        assert set(by) == {"fusedopt", "keras", "fusedopt+XLA", "keras+XLA", "injected-wrong"}
        for name in ("fusedopt", "keras", "fusedopt+XLA", "keras+XLA"):
            assert by[name]["check"].startswith("ok") and by[name]["ms"] > 0, by[name]
            assert len(by[name]["extra"]["losses"]) == 3  # one epoch per round
        # The fused Adam gives Keras' numbers bit for bit: identical loss curves.
        assert by["fusedopt"]["check"] == "ok (identical to Keras)", by["fusedopt"]
        # The loss curves move, and a doubled learning rate is caught.
        losses = by["fusedopt"]["extra"]["losses"]
        assert max(losses) > 1.5 * min(losses), losses
        assert by["injected-wrong"]["check"].startswith("WRONG")
        assert by["injected-wrong"]["ms"] is None


def test_sparse_suite_checks_each_semantics(tmp_path):
    r, data = bench(tmp_path, "--suite", "sparse", "--quick", "--repeats", "1", "--warmup", "0",
                    "--inject-wrong")
    assert r.returncode == 0, r.stderr[-3000:]
    by = {x["contender"]: x for x in data["rows"]}
    assert {"fusedopt exact", "fusedopt lazy", "keras", "keras+XLA", "roofline"} <= set(by)
    for name in ("fusedopt exact", "fusedopt lazy", "keras"):
        assert by[name]["check"] == "ok", by[name]
        assert by[name]["ms"] > 0
    # The lazy update judged against the exact semantics: caught, not timed.
    assert by["injected-wrong"]["check"].startswith("WRONG")
    assert by["injected-wrong"]["ms"] is None


def test_check_reports_an_injected_wrong_contender_and_does_not_time_it(tmp_path):
    r, data = bench(tmp_path, "--suite", "sizes", "--sizes", "5000", "--repeats", "1",
                    "--warmup", "0", "--no-xla", "--inject-wrong")
    assert r.returncode == 0, r.stderr[-3000:]
    wrong = [x for x in data["rows"] if x["contender"] == "injected-wrong"]
    assert len(wrong) == 1 and wrong[0]["check"].startswith("WRONG")
    assert wrong[0]["ms"] is None
    assert "WRONG" in r.stdout
    assert all(x["check"].startswith("ok") or x["check"] == "n/a" for x in data["rows"]
               if x["contender"] != "injected-wrong")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--suite", "nope"], "unknown suite 'nope'"),
        (["--algorithms", "adamz"], "unknown algorithm 'adamz'"),
        (["--dtypes", "int8"], "unknown dtype 'int8'"),
        (["--models", "gpt5"], "unknown model 'gpt5'"),
        (["--many", "ten-by-five"], "--many takes COUNTxSIZE"),
        (["--json", "/nonexistent-dir/x.json"], "cannot write --json output"),
        (["--suite", "ps", "--ps-table", "1000"], "--ps-table takes two positive integers"),
        (["--suite", "ps", "--ps-batch", "0x8"], "--ps-batch takes two positive integers"),
        (["--suite", "ps", "--ps-steps", "0"], "--ps-steps must be >= 1"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, args, message):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-m", "fusedopt.bench", "--plot", "", *args],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def _live_processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline[:200])
    return found


def test_ps_suite_on_a_tiny_local_cluster(tmp_path):
    """--suite ps end to end at a tiny size: 2 parameter servers and a worker
    started and killed, every contender checked then timed, the time split,
    an injected wrong contender caught and not timed."""
    r, data = bench(tmp_path, "--suite", "ps", "--ps-table", "10000x8", "--ps-batch", "32x4",
                    "--ps-steps", "3", "--repeats", "2", "--warmup", "1", "--inject-wrong")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_schema(data)
    assert "suite: ps" in r.stdout and "ps: check fusedopt lazy (adam): ok" in r.stdout
    rows = data["rows"]
    assert {x["suite"] for x in rows} == {"ps"}
    assert rows[0]["case"] == "10,000 x 8 table on 2 ps, batch 32 x 4 ids, 1 worker"
    by = {(x["algorithm"], x["contender"]): x for x in rows}
    steps = [("adam", "fusedopt lazy"), ("adam", "fusedopt exact"), ("adam", "tf_keras"),
             ("adagrad", "fusedopt"), ("adagrad", "tf_keras")]
    splits = [("-", "split: empty closure"), ("-", "split: lookup only"),
              ("-", "split: step without update")] + [
        (a, f"split: update alone on ps:0, {c}") for a, c in steps]
    assert set(by) == set(steps + splits + [("adam", "injected-wrong")])
    for key in steps:
        x = by[key]
        assert x["check"] == "ok", x
        assert x["extra"]["kind"] == "step" and x["extra"]["ps"] == 2
        assert x["ms"] > 0 and len(x["extra"]["ms_per_round"]) == 2
        assert x["ms_min"] <= x["ms"] <= x["ms_max"]
        assert abs(x["extra"]["steps_per_s"] * x["ms"] - 1000) < 1e-6
        # 8 x 10,000 table rows (2 shards) + the tower 32 -> 256 -> 64 -> 1
        assert x["tensors"] == 2 + 6 and x["elements"] == 80_000 + 32 * 256 + 256 + 256 * 64 + 64 + 65
        assert x["speedup_vs_keras"] > 0
    assert by[("adam", "tf_keras")]["speedup_vs_keras"] == 1.0
    assert by[("adam", "fusedopt lazy")]["extra"]["semantics"] == "lazy"
    for key in splits:
        assert by[key]["check"] == "n/a" and by[key]["ms"] is not None, by[key]
    # The lazy Adam judged against the exact semantics: caught, not timed.
    wrong = by[("adam", "injected-wrong")]
    assert wrong["check"].startswith("WRONG") and "table" in wrong["check"], wrong
    assert wrong["ms"] is None
    # Every server process is gone.
    for address in rows[0]["extra"]["cluster"]["ps"] + rows[0]["extra"]["cluster"]["worker"]:
        assert not _live_processes_mentioning(address), address


def test_ps_suite_is_not_part_of_quick():
    from fusedopt.bench import cli

    args = cli.parse_args(["--quick"])
    cli.validate(args)
    assert "ps" not in args.suite
    args = cli.parse_args([])
    cli.validate(args)
    assert "ps" not in args.suite
    args = cli.parse_args(["--suite", "ps"])
    cli.validate(args)
    assert (args.ps_repeats, args.ps_warmup, args.ps_steps) == (5, 1, 20)
    assert args.ps_table == (1_000_000, 64) and args.ps_batch == (512, 8)


def test_resnet50_shapes_are_keras_resnet50():
    """The one table of model shapes (fusedopt.bench.shapes, plain Python so
    the gpu suite needs no TensorFlow) is ResNet-50's trainable variables as
    Keras builds them, in Keras' order."""
    import keras

    from fusedopt.bench import shapes

    want = [tuple(v.shape) for v in keras.applications.ResNet50(weights=None).trainable_variables]
    assert shapes.resnet50() == want
    assert len(want) == 214 and shapes.elements(want) == 25_583_592


def test_bench_tables_fail_loudly_on_a_rule_they_do_not_know(monkeypatch):
    """Every suite's rule table names every registry rule (timed or skipped,
    with a reason); a registry rule unknown to a table is an error, not a
    silent gap."""
    from fusedopt.bench import gpu, rules

    gpu.check_rules()  # the tables as they are: every registry rule placed
    real = rules.registry()
    fake = dict(real, new_rule=rules.RuleInfo("new_rule", ("lr",), (), (), False))
    monkeypatch.setattr(rules, "registry", lambda: fake)
    with pytest.raises(rules.UnknownRuleError, match="new_rule"):
        gpu.check_rules()
    with pytest.raises(rules.UnknownRuleError, match="new_rule"):
        rules.require_known({name: None for name in real}, "a table")


def test_bench_modules_import_no_circle():
    """fusedopt.bench's modules (and fusedopt.reference) import each other
    as a DAG: no module imports one that imports it back."""
    import ast

    root = Path(__file__).resolve().parent.parent / "python" / "fusedopt"
    files = {f"fusedopt.bench.{f.stem}": f for f in (root / "bench").glob("*.py")}
    files["fusedopt.reference"] = root / "reference.py"
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {d for d in files if d in deps and d != name}
    done: set[str] = set()

    def visit(name, path):
        assert name not in path, " -> ".join(path + [name])
        if name not in done:
            for dep in graph[name]:
                visit(dep, path + [name])
            done.add(name)

    for name in graph:
        visit(name, [])
